//! The store on S3-compatible object storage (`s3://bucket/prefix`), through
//! `object_store`. The store's API stays synchronous: this backend owns a
//! small tokio runtime and blocks on it.
//!
//! ```text
//! prefix/tpde-store.json          the manifest, replaced by conditional puts
//! prefix/objects/ab/ab12….tpde    content files, named by the XXH3-128 of their bytes
//! ```
//!
//! There is no lock. A write reads the manifest and its ETag, uploads the
//! content files it makes, and publishes the new manifest with a conditional
//! put (`If-None-Match: *` for the first, `If-Match: <ETag>` after): of two
//! writers that began from the same manifest, exactly one commits. See the
//! "Object storage" section of docs/STORE.md for the garbage collection rule.
//!
//! The only module behind the `s3` feature. May call: `common`,
//! `container::format` and the shared names of [`super`].

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::mmap::FileBytes;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use super::{
    local_temp_dir, not_a_store, object_rel, store_error, Backend, Garbage, Lease, ObjectWriter,
    Version, MANIFEST, OBJECTS,
};
use crate::common::error::{Error, Result};
use crate::container::format;

/// Content files up to this size are uploaded in one request; bigger ones in
/// parts of this size (S3 wants parts of at least 5 MiB).
const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Unlisted content files younger than this are left alone by garbage
/// collection: a concurrent writer may be about to commit them.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Where a store is: a local directory or an object storage prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Location {
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty: the bucket's
    /// root).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; `None` when `s` is not an `s3://` URL.
    pub fn parse(s: &str) -> Option<Result<S3Location>> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let bad = |why: &str| {
            Some(Err(Error::InvalidArgument(format!(
                "{s:?} is not a usable store URL ({why}); write s3://BUCKET/PREFIX"
            ))))
        };
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return bad("bad bucket name");
        }
        // Relative, staying under the bucket (as the manifest's paths).
        let safe = |p: &str| {
            !p.contains('\\')
                && !p.contains('\0')
                && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        };
        if !prefix.is_empty() && !safe(prefix) {
            return bad("bad prefix");
        }
        Some(Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

pub(crate) struct S3Backend {
    loc: S3Location,
    /// `s3://bucket/prefix`, as a path (what the store shows).
    url: PathBuf,
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    tmp_dir: PathBuf,
    grace: Mutex<Duration>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("url", &self.loc.url())
            .finish()
    }
}

impl S3Backend {
    /// The backend of `location` (`s3://bucket[/prefix]`).
    pub fn open(location: &str) -> Result<S3Backend> {
        match S3Location::parse(location) {
            Some(loc) => S3Backend::new(loc?),
            None => Err(Error::InvalidArgument(format!(
                "{location:?} is not an s3:// URL"
            ))),
        }
    }

    /// A client for `loc`, configured from the `AWS_*` environment variables
    /// (endpoint, region, credentials, `AWS_ALLOW_HTTP`).
    pub fn new(loc: S3Location) -> Result<S3Backend> {
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&loc.bucket)
            // The commit protocol rests on If-Match / If-None-Match; do not
            // let an `AWS_CONDITIONAL_PUT=disabled` in the environment turn
            // it off.
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", loc.url())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tpde-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io(loc.url(), e))?;
        let tmp_dir = local_temp_dir();
        Ok(S3Backend {
            url: PathBuf::from(loc.url()),
            loc,
            store,
            rt,
            tmp_dir,
            grace: Mutex::new(DEFAULT_GRACE),
        })
    }

    pub fn url(&self) -> String {
        self.loc.url()
    }

    fn grace(&self) -> Duration {
        self.grace.lock().map(|g| *g).unwrap_or(DEFAULT_GRACE)
    }

    fn key(&self, rel: &str) -> Path {
        if self.loc.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.loc.prefix))
        }
    }

    /// The URL of a content file, for messages.
    pub fn object_url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.loc.bucket, self.key(&object_rel(name)))
    }

    fn err(&self, key: &Path, e: object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        Error::io(
            format!("s3://{}/{key}", self.loc.bucket),
            io::Error::new(kind, e),
        )
    }

    /// A local temporary file with no name (removed by the system when it
    /// is closed, also when the process is killed).
    pub fn tmp_file(&self) -> Result<std::fs::File> {
        tempfile::tempfile_in(&self.tmp_dir).map_err(|e| Error::io(&self.tmp_dir, e))
    }

    /// The manifest's bytes and ETag; `None` when there is none.
    fn manifest_now(&self) -> Result<Option<(Vec<u8>, Version)>> {
        let key = self.key(MANIFEST);
        self.rt.block_on(async {
            let got = match self.store.get(&key).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err(&key, e)),
            };
            let etag = got.meta.e_tag.clone();
            let bytes = got.bytes().await.map_err(|e| self.err(&key, e))?;
            Ok(Some((bytes.to_vec(), etag)))
        })
    }

    /// True when the manifest exists.
    fn has_manifest(&self) -> Result<bool> {
        let key = self.key(MANIFEST);
        match self.rt.block_on(self.store.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    /// Publishes `bytes` as the manifest if it is still at `version` (absent
    /// for `None`). Another writer's commit in between gives
    /// [`Error::Conflict`].
    fn put_manifest(&self, bytes: Vec<u8>, version: &Version) -> Result<()> {
        let key = self.key(MANIFEST);
        let mode = match version {
            None => PutMode::Create,
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag.clone()),
                version: None,
            }),
        };
        let put = self.rt.block_on(self.store.put_opts(
            &key,
            PutPayload::from(bytes.clone()),
            PutOptions::from(mode),
        ));
        match put {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {
                // A retried request whose first attempt went through fails its
                // own precondition: then the manifest is ours.
                match self.manifest_now()? {
                    Some((now, _)) if now == bytes => Ok(()),
                    _ => Err(Error::Conflict(PathBuf::from(self.url()))),
                }
            }
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn url_of(&self, key: &Path) -> String {
        format!("s3://{}/{key}", self.loc.bucket)
    }

    /// Size of content file `name`, `None` when it does not exist.
    fn object_size(&self, name: &str) -> Result<Option<u64>> {
        let key = self.key(&object_rel(name));
        match self.rt.block_on(self.store.head(&key)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    /// Stores content file `name` (of `len` bytes, in the local file `file`).
    /// When `listed` (the manifest this write began from lists it) and a copy
    /// of that size is there, nothing is uploaded: a concurrent garbage
    /// collection deletes a listed file only after a commit that makes this
    /// write's commit fail. An unlisted file is always uploaded, which also
    /// renews its age for garbage collection. Returns whether it uploaded.
    fn put_file(&self, name: &str, file: &std::fs::File, len: u64, listed: bool) -> Result<bool> {
        if listed && self.object_size(name)? == Some(len) {
            return Ok(false);
        }
        self.upload(name, file, len)?;
        Ok(true)
    }

    fn upload(&self, name: &str, file: &std::fs::File, len: u64) -> Result<()> {
        let key = self.key(&object_rel(name));
        let mut f = file.try_clone().map_err(|e| Error::io(&self.tmp_dir, e))?;
        io::Seek::seek(&mut f, io::SeekFrom::Start(0)).map_err(|e| Error::io(&self.tmp_dir, e))?;
        if len <= PART as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io(&self.tmp_dir, e))?;
            self.rt
                .block_on(self.store.put(&key, PutPayload::from(buf)))
                .map_err(|e| self.err(&key, e))?;
            return Ok(());
        }
        self.rt.block_on(async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.err(&key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            let sent: Result<()> = async {
                loop {
                    let n = f.read(&mut buf).map_err(|e| Error::io(&self.tmp_dir, e))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| self.err(&key, e))?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => {
                    w.finish().await.map_err(|e| self.err(&key, e))?;
                    Ok(())
                }
                Err(e) => {
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Downloads content file `name` to a local temporary file, streamed,
    /// and maps it.
    fn fetch(&self, name: &str) -> Result<FileBytes> {
        let key = self.key(&object_rel(name));
        let mut file = self.tmp_file()?;
        let path = self.tmp_dir.clone();
        self.rt.block_on(async {
            let got = self.store.get(&key).await.map_err(|e| self.err(&key, e))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(&key, e))?;
                file.write_all(&chunk).map_err(|e| Error::io(&path, e))?;
            }
            file.flush().map_err(|e| Error::io(&path, e))
        })?;
        FileBytes::from_file(&file, &path)
    }

    /// The XXH3-128 of content file `name`, hashed as it streams in.
    fn digest_of(&self, name: &str) -> Result<String> {
        let key = self.key(&object_rel(name));
        self.rt.block_on(async {
            let got = self.store.get(&key).await.map_err(|e| self.err(&key, e))?;
            let mut stream = got.into_stream();
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            while let Some(chunk) = stream.next().await {
                h.update(&chunk.map_err(|e| self.err(&key, e))?);
            }
            Ok(format::digest_hex(h.digest128()))
        })
    }

    /// Every content file under `objects/`: (name, URL, last modified).
    /// Keys that are not content file names are left out (and never
    /// deleted).
    fn list_objects(&self) -> Result<Vec<(String, String, server_time::Time)>> {
        let prefix = self.key(OBJECTS);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut list = self.store.list(Some(&prefix));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(|e| self.err(&prefix, e))?;
                let Some(name) = meta
                    .location
                    .filename()
                    .and_then(|f| f.strip_suffix(".tpde"))
                    .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                else {
                    continue;
                };
                out.push((
                    name.to_string(),
                    self.url_of(&meta.location),
                    server_time::Time::of(meta.last_modified.timestamp_millis()),
                ));
            }
            out.sort();
            Ok(out)
        })
    }

    /// The server's time of the last modification of the manifest.
    fn manifest_modified(&self) -> Result<server_time::Time> {
        let manifest = self.key(MANIFEST);
        match self.rt.block_on(self.store.head(&manifest)) {
            Ok(m) => Ok(server_time::Time::of(m.last_modified.timestamp_millis())),
            Err(e) => Err(self.err(&manifest, e)),
        }
    }
}

impl Backend for S3Backend {
    fn location(&self) -> &std::path::Path {
        &self.url
    }

    fn exists(&self) -> Result<bool> {
        self.has_manifest()
    }

    fn create(&self, manifest: &[u8], _parents: bool) -> Result<()> {
        let already = || store_error(&self.url, "already holds a store");
        if self.has_manifest()? {
            return Err(already());
        }
        match self.put_manifest(manifest.to_vec(), &None) {
            Err(Error::Conflict(_)) => Err(already()),
            r => r,
        }
    }

    /// Readers take no lock: they read the manifest, then content objects
    /// that never change.
    fn read_lock(&self) -> Result<Option<std::fs::File>> {
        Ok(None)
    }

    fn read_manifest(&self) -> Result<Option<(Vec<u8>, Version)>> {
        self.manifest_now()
    }

    /// No lock: the manifest and its ETag, for the conditional put.
    fn begin_write(&self) -> Result<(Lease, Vec<u8>)> {
        let (text, version) = self.manifest_now()?.ok_or_else(|| not_a_store(&self.url))?;
        let lease = Lease {
            version,
            ..Lease::default()
        };
        Ok((lease, text))
    }

    /// Coded into a local unnamed temporary file, hashed, then uploaded by
    /// `finish` (kept until the write ends, see `publish_manifest`).
    fn put_object<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        let file = self.tmp_file()?;
        let dup = file.try_clone().map_err(|e| Error::io(&self.tmp_dir, e))?;
        Ok(Box::new(S3Writer {
            s3: self,
            lease,
            buf: io::BufWriter::with_capacity(1 << 20, dup),
            file,
        }))
    }

    /// A rank's object goes where every object goes: unlisted objects are
    /// collected only past the grace period.
    fn put_pending<'a>(&'a self, lease: &'a Lease) -> Result<Box<dyn ObjectWriter + 'a>> {
        self.put_object(lease)
    }

    /// Each pending object is there with its length.
    fn adopt_pending(&self, _: &Lease, objects: &[(String, u64)]) -> Result<()> {
        for (name, len) in objects {
            match self.object_size(name)? {
                Some(n) if n == *len => {}
                found => {
                    return Err(store_error(
                        &self.url,
                        format!(
                            "content object {} of a rank's save is {} (was the save \
                             interrupted?)",
                            self.object_url(name),
                            match found {
                                None => "missing".to_string(),
                                Some(n) => format!("{n} bytes, not {len}"),
                            }
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The conditional put; then uploads again any content object of this
    /// write that `listed` names and that is gone (deleted by a concurrent
    /// garbage collection that judged it by an old listing).
    fn publish_manifest(
        &self,
        lease: &Lease,
        manifest: Vec<u8>,
        listed: &HashSet<&str>,
    ) -> Result<()> {
        self.put_manifest(manifest, &lease.version)?;
        let kept = lease
            .kept
            .lock()
            .map_err(|_| store_error(&self.url, "internal: the list of uploads is poisoned"))?;
        for (name, file) in kept.iter().filter(|(n, _)| listed.contains(n.as_str())) {
            if self.object_size(name)?.is_none() {
                let len = file
                    .metadata()
                    .map_err(|e| Error::io(&self.tmp_dir, e))?
                    .len();
                self.upload(name, file, len)?;
            }
        }
        Ok(())
    }

    fn get_object(&self, name: &str) -> Result<FileBytes> {
        self.fetch(name)
    }

    fn object_digest(&self, name: &str) -> Result<String> {
        self.digest_of(name)
    }

    fn object_display(&self, name: &str) -> String {
        self.object_url(name)
    }

    /// Content objects that `listed` does not name (URLs); keys that are not
    /// content object names are left out (and never deleted).
    fn scan(&self, listed: &HashSet<&str>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let garbage = self
            .list_objects()?
            .into_iter()
            .filter(|(n, _, _)| !listed.contains(n.as_str()))
            .map(|(_, url, _)| PathBuf::from(url))
            .collect();
        Ok((garbage, Vec::new()))
    }

    /// Nothing before this write's own commit (another writer may have
    /// uploaded files it has not committed yet). After it, content objects
    /// that `new` does not list and that no later writer can be about to
    /// commit:
    ///
    /// - objects that `old` (the manifest this write replaced) listed, when
    ///   they are older than the committed manifest: a writer that commits
    ///   one of them again must have read a manifest at least as new as ours
    ///   and then uploaded it, which makes it younger;
    /// - other objects when they are older than that by the grace period
    ///   (left by a crashed writer; a live one commits within the grace
    ///   period).
    ///
    /// Each object's age is read again just before it is deleted.
    fn collectable(
        &self,
        _: &Lease,
        old: &HashSet<&str>,
        new: &HashSet<&str>,
        committed: bool,
    ) -> Result<Vec<Garbage>> {
        if !committed {
            return Ok(Vec::new());
        }
        let at = self.manifest_modified()?;
        let grace = self.grace();
        let mut out = Vec::new();
        for (name, url, modified) in self.list_objects()? {
            if new.contains(name.as_str()) {
                continue;
            }
            let by = if old.contains(name.as_str()) {
                Duration::ZERO
            } else {
                grace
            };
            let cutoff = at.minus(by);
            if modified.before(cutoff, Duration::ZERO) {
                out.push(Garbage {
                    shown: PathBuf::from(url),
                    object: Some(name),
                    modified_before: Some(cutoff.millis()),
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, g: &Garbage) -> Result<()> {
        let Some(name) = &g.object else {
            return Ok(());
        };
        let key = self.key(&object_rel(name));
        let now = match self.rt.block_on(self.store.head(&key)) {
            Ok(m) => server_time::Time::of(m.last_modified.timestamp_millis()),
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(self.err(&key, e)),
        };
        if g.modified_before
            .is_some_and(|cutoff| !now.before(server_time::Time::of(cutoff), Duration::ZERO))
        {
            return Ok(()); // uploaded again meanwhile
        }
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn spill_dir(&self) -> PathBuf {
        local_temp_dir()
    }

    fn set_gc_grace(&self, grace: Duration) {
        if let Ok(mut g) = self.grace.lock() {
            *g = grace;
        }
    }
}

/// A content object being coded into a local temporary file; uploaded by
/// `finish`.
struct S3Writer<'a> {
    s3: &'a S3Backend,
    lease: &'a Lease,
    buf: io::BufWriter<std::fs::File>,
    file: std::fs::File,
}

impl Write for S3Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.buf.flush()
    }
}

impl ObjectWriter for S3Writer<'_> {
    fn path(&self) -> &std::path::Path {
        &self.s3.tmp_dir
    }

    fn finish(self: Box<Self>, name: &str, listed: bool) -> Result<()> {
        let S3Writer {
            s3,
            lease,
            buf,
            file,
        } = *self;
        let path = &s3.tmp_dir;
        buf.into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if s3.put_file(name, &file, len, listed)? {
            if let Ok(mut kept) = lease.kept.lock() {
                kept.push((name.to_string(), file));
            }
        }
        Ok(())
    }
}

/// Object storage times (from `last_modified`), in milliseconds since the
/// epoch, kept apart from the local clock: only times from the server are
/// compared with each other.
mod server_time {
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Time(i64);

    impl Time {
        pub fn of(millis: i64) -> Time {
            Time(millis)
        }

        pub fn millis(self) -> i64 {
            self.0
        }

        /// `self` less `by`.
        pub fn minus(self, by: Duration) -> Time {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            Time(self.0.saturating_sub(by))
        }

        /// True when `self` is earlier than `other` by more than `by`.
        pub fn before(self, other: Time, by: Duration) -> bool {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            self.0 < other.0.saturating_sub(by)
        }
    }
}
