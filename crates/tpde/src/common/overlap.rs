//! Two stages of a stream that overlap: the thread pool makes item k + 1
//! (decodes a batch, reads and codes a window) into one of two buffers
//! while the calling thread uses item k (writes it), so that neither waits
//! for the other. The calling thread is the one that may hold what is not
//! `Send` (the output writer).

use crate::common::error::Result;

/// Runs `produce(k, buf)` for `k` in `0..n` on the thread pool, one after
/// another, each into one of two reused buffers, and `consume(k, item,
/// buf)` for each `k` in order on the calling thread, item k's `consume`
/// beside item k + 1's `produce`. Stops at the first error, of either,
/// once the `produce` under way has ended.
pub(crate) fn overlapped<T: Send>(
    n: usize,
    mut produce: impl FnMut(usize, &mut Vec<u8>) -> Result<T> + Send,
    mut consume: impl FnMut(usize, T, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut ready = match n {
        0 => None,
        _ => Some(produce(0, &mut bufs[0])?),
    };
    for k in 0..n {
        let item = ready.take().expect("item k was produced");
        let [even, odd] = &mut bufs;
        let (this, next) = if k % 2 == 0 { (even, odd) } else { (odd, even) };
        let mut ahead = None;
        let produce = &mut produce;
        let consumed = rayon::in_place_scope(|scope| {
            if k + 1 < n {
                let ahead = &mut ahead;
                scope.spawn(move |_| *ahead = Some(produce(k + 1, next)));
            }
            consume(k, item, this)
        });
        consumed?;
        ready = ahead.transpose()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::error::Error;

    /// Every item is consumed in order with the buffer it was made in, and
    /// an error of either stage ends the stream with that error.
    #[test]
    fn items_come_in_order_with_their_buffers() {
        for n in 0..6 {
            let mut seen = Vec::new();
            overlapped(
                n,
                |k, buf| {
                    buf.clear();
                    buf.extend(std::iter::repeat_n(k as u8, k + 1));
                    Ok(k * 10)
                },
                |k, item, buf| {
                    assert_eq!(item, k * 10);
                    assert_eq!(buf, vec![k as u8; k + 1]);
                    seen.push(k);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
        let bad = |at: usize| {
            move |k: usize| {
                if k == at {
                    Err(Error::corrupt(format!("item {k}")))
                } else {
                    Ok(())
                }
            }
        };
        for at in 0..4 {
            let mut used = 0;
            let e = overlapped(
                4,
                |k, _| bad(at)(k),
                |_, (), _| {
                    used += 1;
                    Ok(())
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains(&format!("item {at}")), "{e}");
            assert_eq!(used, at);
            let mut used = 0;
            let e = overlapped(
                4,
                |_, _| Ok(()),
                |k, (), _| {
                    used += 1;
                    bad(at)(k)
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains(&format!("item {at}")), "{e}");
            assert_eq!(used, at + 1);
        }
    }
}
