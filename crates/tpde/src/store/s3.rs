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

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use super::io::StoreIo;
use super::{Manifest, MANIFEST, OBJECTS};
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
        if !prefix.is_empty() && !super::manifest::safe_relative(prefix) {
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

/// The version of the manifest a write began from: its ETag, or `None`
/// when there was no manifest yet.
pub(crate) type Version = Option<String>;

/// A content file this write uploaded, kept on local disk until the write
/// ends so that it can be uploaded again if it vanished (see `repair`).
pub(crate) struct Uploaded {
    pub name: String,
    /// Its bytes, in an unnamed local temporary file.
    pub file: std::fs::File,
}

/// A content file downloaded to a local temporary file, mapped.
pub(crate) struct Fetched {
    bytes: crate::common::mmap::FileBytes,
}

impl std::ops::Deref for Fetched {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

pub(crate) struct S3Backend {
    loc: S3Location,
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
        let tmp_dir = super::io::local_temp_dir();
        Ok(S3Backend {
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

    pub fn set_grace(&self, grace: Duration) {
        if let Ok(mut g) = self.grace.lock() {
            *g = grace;
        }
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

    fn object_rel(name: &str) -> String {
        format!("{OBJECTS}/{}/{name}.tpde", &name[..2.min(name.len())])
    }

    /// The URL of a content file, for messages.
    pub fn object_url(&self, name: &str) -> String {
        format!(
            "s3://{}/{}",
            self.loc.bucket,
            self.key(&Self::object_rel(name))
        )
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
    pub fn read_manifest(&self) -> Result<Option<(Vec<u8>, Version)>> {
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
    pub fn has_manifest(&self) -> Result<bool> {
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
    pub fn publish_manifest(&self, io: &StoreIo, bytes: Vec<u8>, version: &Version) -> Result<()> {
        let key = self.key(MANIFEST);
        io.tick("put", &self.url_of(&key))
            .map_err(|e| Error::io(self.url_of(&key), e))?;
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
                match self.read_manifest()? {
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
        let key = self.key(&Self::object_rel(name));
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
    pub fn put_object(
        &self,
        io: &StoreIo,
        name: &str,
        file: &std::fs::File,
        len: u64,
        listed: bool,
    ) -> Result<bool> {
        if listed && self.object_size(name)? == Some(len) {
            return Ok(false);
        }
        self.upload(io, name, file, len)?;
        Ok(true)
    }

    fn upload(&self, io: &StoreIo, name: &str, file: &std::fs::File, len: u64) -> Result<()> {
        let key = self.key(&Self::object_rel(name));
        let url = self.url_of(&key);
        let ioe = |e: io::Error| Error::io(&url, e);
        io.tick("upload", &url).map_err(ioe)?;
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
                    io.tick("upload part", &url).map_err(ioe)?;
                    w.wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| self.err(&key, e))?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => {
                    io.tick("complete upload", &url).map_err(ioe)?;
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
    pub fn fetch(&self, name: &str) -> Result<Fetched> {
        let key = self.key(&Self::object_rel(name));
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
        Ok(Fetched {
            bytes: crate::common::mmap::FileBytes::from_file(&file, &path)?,
        })
    }

    /// The XXH3-128 of content file `name`, hashed as it streams in.
    pub fn object_digest(&self, name: &str) -> Result<String> {
        let key = self.key(&Self::object_rel(name));
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

    /// Content files that `m` does not list (URLs).
    pub fn garbage(&self, m: &Manifest) -> Result<Vec<PathBuf>> {
        let listed = listed(m);
        Ok(self
            .list_objects()?
            .into_iter()
            .filter(|(n, _, _)| !listed.contains(n.as_str()))
            .map(|(_, url, _)| PathBuf::from(url))
            .collect())
    }

    /// After this write's commit: uploads again any content file of this
    /// write that is gone (deleted by a concurrent garbage collection that
    /// judged it by an old listing), then collects garbage.
    pub fn after_commit(
        &self,
        io: &StoreIo,
        uploaded: &[Uploaded],
        old: &Manifest,
        new: &Manifest,
    ) -> Result<()> {
        let now_listed = listed(new);
        for u in uploaded
            .iter()
            .filter(|u| now_listed.contains(u.name.as_str()))
        {
            io.tick("head", &self.object_url(&u.name))
                .map_err(|e| Error::io(self.object_url(&u.name), e))?;
            if self.object_size(&u.name)?.is_none() {
                let len = u
                    .file
                    .metadata()
                    .map_err(|e| Error::io(&self.tmp_dir, e))?
                    .len();
                self.upload(io, &u.name, &u.file, len)?;
            }
        }
        self.collect_garbage(io, old, new)
    }

    /// Deletes content files that `new` (just committed by this writer) does
    /// not list and that no later writer can be about to commit:
    ///
    /// - files that `old` (the manifest this write replaced) listed, when
    ///   they are older than the committed manifest: a writer that commits
    ///   one of them again must have read a manifest at least as new as ours
    ///   and then uploaded it, which makes it younger;
    /// - other files when they are older than that by the grace period (left
    ///   by a crashed writer; a live one commits within the grace period).
    ///
    /// Each file's age is read again just before it is deleted.
    fn collect_garbage(&self, io: &StoreIo, old: &Manifest, new: &Manifest) -> Result<()> {
        let manifest = self.key(MANIFEST);
        let committed: server_time::Time = match self.rt.block_on(self.store.head(&manifest)) {
            Ok(m) => server_time::Time::of(m.last_modified.timestamp_millis()),
            Err(e) => return Err(self.err(&manifest, e)),
        };
        let keep = listed(new);
        let was = listed(old);
        let grace = self.grace();
        let deletable = |name: &str, modified: server_time::Time| {
            if keep.contains(name) {
                return false;
            }
            if was.contains(name) {
                modified.before(committed, Duration::ZERO)
            } else {
                modified.before(committed, grace)
            }
        };
        for (name, url, modified) in self.list_objects()? {
            if !deletable(&name, modified) {
                continue;
            }
            let key = self.key(&Self::object_rel(&name));
            let now: server_time::Time = match self.rt.block_on(self.store.head(&key)) {
                Ok(m) => server_time::Time::of(m.last_modified.timestamp_millis()),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(&key, e)),
            };
            if !deletable(&name, now) {
                continue;
            }
            io.tick("delete", &url).map_err(|e| Error::io(&url, e))?;
            match self.rt.block_on(self.store.delete(&key)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(&key, e)),
            }
        }
        Ok(())
    }
}

fn listed(m: &Manifest) -> HashSet<&str> {
    m.steps
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.object.as_str()))
        .collect()
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

        /// True when `self` is earlier than `other` by more than `by`.
        pub fn before(self, other: Time, by: Duration) -> bool {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            self.0 < other.0.saturating_sub(by)
        }
    }
}
