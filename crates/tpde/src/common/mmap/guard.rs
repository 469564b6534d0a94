//! The SIGBUS handler and its table of tpde's maps (Linux; elsewhere a stub
//! in `mmap` stands in for this module). A read past the end of a file cut
//! short under its map faults; for a fault inside one of tpde's maps the
//! handler puts zero pages where the file is gone and marks the map (which
//! [`truncated`] then tells); any other SIGBUS goes to the action it
//! replaced. The table is a fixed array of atomics, so that the handler
//! takes no lock. Nearly all of the crate's `unsafe` is here, each block
//! with its `// SAFETY:` argument; the other two (making a map, letting go
//! of its pages) sit in `mmap` beside the registry they rely on.

use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Maps the handler can tell apart at once; more are read into memory.
pub(super) const SLOTS: usize = 4096;

/// A reserved entry of the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot(usize);

pub(super) enum Reserve {
    /// Map, then [`publish`] the map in this slot.
    Slot(Slot),
    /// No handler here: map without one.
    #[allow(dead_code)]
    Unguarded,
    /// The table is full (or the handler could not be installed): read
    /// the file instead of mapping it.
    Full,
}

/// One map: `seq` is a generation count (bits 2 and up) and a state
/// (bits 0-1), changed by the slot's owner only; the handler reads the
/// range between two equal loads of `seq` in the `LIVE` state, so that
/// it never mixes the range of two maps.
struct Entry {
    seq: AtomicU64,
    start: AtomicUsize,
    len: AtomicUsize,
    truncated: AtomicBool,
}

const FREE: u64 = 0;
const WRITING: u64 = 1;
const LIVE: u64 = 2;
const STATE: u64 = 3;

static TABLE: [Entry; SLOTS] = [const {
    Entry {
        seq: AtomicU64::new(FREE),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        truncated: AtomicBool::new(false),
    }
}; SLOTS];
/// Where to start looking for a free slot.
static NEXT: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
static PAGE: AtomicUsize = AtomicUsize::new(0);
/// The action tpde's handler replaced, for the faults that are not
/// tpde's.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page <= 0 || !(page as usize).is_power_of_two() {
            return;
        }
        PAGE.store(page as usize, Ordering::Relaxed);
        // SAFETY: a zeroed sigaction is a valid value (no handler, empty
        // mask, no flags) that is filled in before use; `on_sigbus` has
        // the signature SA_SIGINFO asks for and only touches
        // async-signal-safe state (atomics, mmap, sigaction, raise).
        // sigaction swaps the handlers atomically and writes the
        // previous one into `previous`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                let _ = PREVIOUS.set(previous);
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// A free slot for a map about to be made.
pub(super) fn reserve() -> Reserve {
    if !install() {
        return Reserve::Full;
    }
    let hint = NEXT.load(Ordering::Relaxed);
    for k in 0..SLOTS {
        let i = (hint + k) % SLOTS;
        let seq = TABLE[i].seq.load(Ordering::Relaxed);
        if seq & STATE == FREE
            && TABLE[i]
                .seq
                .compare_exchange(seq, seq | WRITING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            fence(Ordering::Release);
            NEXT.store(i + 1, Ordering::Relaxed);
            return Reserve::Slot(Slot(i));
        }
    }
    Reserve::Full
}

/// Puts the map `[start, start + len)` in its reserved slot, before it
/// is read.
pub(super) fn publish(slot: Slot, start: usize, len: usize) {
    let e = &TABLE[slot.0];
    e.start.store(start, Ordering::Relaxed);
    e.len.store(len, Ordering::Relaxed);
    e.truncated.store(false, Ordering::Relaxed);
    let seq = e.seq.load(Ordering::Relaxed);
    e.seq.store(next(seq, LIVE), Ordering::Release);
}

/// Frees a slot, before its map is unmapped.
pub(super) fn unregister(slot: Slot) {
    let e = &TABLE[slot.0];
    let seq = e.seq.load(Ordering::Relaxed);
    e.seq.store(next(seq, FREE), Ordering::Release);
}

/// Whether the handler found the slot's file cut short.
pub(super) fn truncated(slot: Slot) -> bool {
    TABLE[slot.0].truncated.load(Ordering::Acquire)
}

fn next(seq: u64, state: u64) -> u64 {
    ((seq >> 2).wrapping_add(1) << 2) | state
}

/// The live map holding `addr`: (slot, start, len).
fn find(addr: usize) -> Option<(usize, usize, usize)> {
    for (i, e) in TABLE.iter().enumerate() {
        let seq = e.seq.load(Ordering::Acquire);
        if seq & STATE != LIVE {
            continue;
        }
        let start = e.start.load(Ordering::Relaxed);
        let len = e.len.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != seq {
            continue;
        }
        if addr >= start && addr - start < len {
            return Some((i, start, len));
        }
    }
    None
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO) or null;
    // si_code > 0 marks a fault raised by the kernel, for which si_addr
    // is the faulting address. errno is the calling thread's, saved and
    // restored around the system calls made here.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `info` is checked non-null first; the kernel's siginfo_t.
    let fault = !info.is_null() && unsafe { (*info).si_code } > 0;
    if fault {
        // SAFETY: non-null (above), and si_code > 0: si_addr is meaningful.
        let addr = unsafe { (*info).si_addr() } as usize;
        if let Some((i, start, len)) = find(addr) {
            let page = PAGE.load(Ordering::Relaxed);
            let from = addr & !(page - 1);
            let to = (start + len).next_multiple_of(page);
            // SAFETY: `[from, to)` lies within the pages of a live
            // read-only map of tpde (in the table: registered after it
            // was made, removed before it is unmapped; read by this
            // thread right now, so not being dropped). Replacing those
            // pages with private anonymous zero pages, read-only like
            // the map, leaves a valid mapping that reads as zeros where
            // the file is gone; munmap of the whole map removes them
            // with the rest. mmap is a plain system call.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    to - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                TABLE[i].truncated.store(true, Ordering::Release);
                // SAFETY: as above.
                unsafe { *libc::__errno_location() = errno };
                return;
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    not_ours(sig, info, ctx, fault);
}

/// Hands a SIGBUS that is not tpde's to the action it replaced.
fn not_ours(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, fault: bool) {
    let previous = PREVIOUS.get();
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_IGN && !fault {
        return;
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // The default action (a fault cannot be ignored): reset it and
        // let the signal come again, a fault by running the faulting
        // instruction again on return, a sent signal by raising it (it
        // is blocked until this handler returns).
        // SAFETY: sigaction and raise are async-signal-safe; a zeroed
        // sigaction is SIG_DFL with an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &action, ptr::null_mut());
            if !fault {
                libc::raise(sig);
            }
        }
        return;
    }
    let Some(previous) = previous else { return };
    // SAFETY: `handler` is the function that was installed for SIGBUS
    // before tpde's, with the signature its flags say; it is called as
    // the kernel would have called it.
    unsafe {
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cut, old_file};
    use super::super::FileBytes;
    use std::fs::File;
    use std::path::Path;

    /// A SIGBUS that is not in one of tpde's maps still kills the process
    /// (through the handler that was there before: Rust's, in a test).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_fault_elsewhere_still_kills() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "TPDE_TEST_FOREIGN_SIGBUS_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            let (ours, _) = old_file(dir, "ours", 2 * 4096);
            let ours = FileBytes::open(&ours).unwrap();
            let (theirs, _) = old_file(dir, "theirs", 2 * 4096);
            let file = File::open(&theirs).unwrap();
            // SAFETY: a test of the handler: the file is cut short below on
            // purpose, and the read that follows must kill this process.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            cut(&theirs, 0);
            let byte = std::hint::black_box(&map[..])[4096 + 1];
            eprintln!("survived a foreign SIGBUS (read {byte}, {})", ours.len());
            std::process::exit(0);
        }
        let dir = tempfile::tempdir().unwrap();
        // The test's own name, wherever the module sits in the crate.
        let name = module_path!().split_once("::").unwrap().1.to_owned()
            + "::a_fault_elsewhere_still_kills";
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        assert_eq!(
            run.status.signal(),
            Some(libc::SIGBUS),
            "{:?}: {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
    }
}
