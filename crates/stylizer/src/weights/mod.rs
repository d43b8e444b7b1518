//! Where model files come from and how tensors are read from them.
//!
//! A model is named by a Hugging Face id (downloaded into, or read offline from, the hub
//! cache that `huggingface_hub` and the `hf-hub` crate share), a local folder with the same
//! layout, or a single checkpoint file. Tensors are read from memory-mapped safetensors (or
//! from a PyTorch `.ckpt`/`.pth` zip) one at a time, converted to the requested dtype and
//! device, and the mapped pages are released right after each copy so that loading never
//! holds the file and the weights in memory at once.

pub(crate) mod pickle_guard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::{Error, Result};

/// A JSON file of a model (configs, tokenizer files), its errors naming the file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Weights(format!("{}: invalid JSON: {e}", path.display())))
}

/// What the user named with `--model-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face repository id such as `stabilityai/stable-diffusion-2-base`.
    Hub(String),
    /// A local folder laid out like the repository (diffusers layout for SD).
    Folder(PathBuf),
    /// One checkpoint file (`.safetensors`, `.ckpt`, `.pth`).
    File(PathBuf),
}

impl ModelSource {
    /// An existing path is a folder or a file; otherwise `owner/name` is a hub id.
    pub fn parse(s: &str) -> Result<Self> {
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::File(path.to_path_buf()));
        }
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() == 2 && parts.iter().all(|p| valid(p)) && !s.starts_with('.') {
            Ok(Self::Hub(s.to_string()))
        } else {
            Err(Error::Config(format!(
                "model {s:?} is neither an existing file or folder nor a Hugging Face id (owner/name)"
            )))
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hub(id) => write!(f, "{id}"),
            Self::Folder(p) | Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How the hub is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubOptions {
    /// Branch, tag or commit (`main` when unset).
    pub revision: Option<String>,
    /// Weight file variant, e.g. `fp16` for `model.fp16.safetensors`.
    pub variant: Option<String>,
    /// Use only the local cache (`--offline` or `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token for gated/private repositories (`HF_TOKEN`, or the token file in HF_HOME).
    pub token: Option<String>,
    /// The hub cache folder (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
}

/// huggingface_hub's truthy values for boolean variables such as `HF_HUB_OFFLINE`.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| truthy(&v))
}

impl HubOptions {
    /// Settings from the environment variables `huggingface_hub` reads.
    pub fn from_env() -> Self {
        let home = std::env::var_os("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from(".cache"))
                    .join("huggingface")
            });
        let cache_dir = std::env::var_os("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| {
                let t = std::fs::read_to_string(home.join("token")).ok()?;
                Some(t.trim().to_string()).filter(|t| !t.is_empty())
            });
        Self {
            revision: None,
            variant: None,
            offline: env_flag("HF_HUB_OFFLINE"),
            token,
            cache_dir,
        }
    }

    fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

/// The files of one repository or folder: which exist, and a local path for each.
pub struct RepoFiles {
    name: String,
    kind: RepoKind,
}

enum RepoKind {
    Local(PathBuf),
    Hub {
        repo: Box<hf_hub::api::sync::ApiRepo>,
        listing: Vec<String>,
    },
}

impl RepoFiles {
    /// A local folder.
    pub fn folder(dir: &Path) -> Self {
        Self {
            name: dir.display().to_string(),
            kind: RepoKind::Local(dir.to_path_buf()),
        }
    }

    /// A hub repository: its listing online, or its snapshot in the cache when offline.
    pub fn hub(id: &str, opts: &HubOptions) -> Result<Self> {
        let rev = opts.revision();
        if opts.offline {
            let repo_dir = opts
                .cache_dir
                .join(format!("models--{}", id.replace('/', "--")));
            let commit = std::fs::read_to_string(repo_dir.join("refs").join(rev))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| rev.to_string());
            let snapshot = repo_dir.join("snapshots").join(&commit);
            if !snapshot.is_dir() {
                return Err(Error::Weights(format!(
                    "{id} (revision {rev}) is not in the Hugging Face cache {} and offline mode is on \
                     (--offline or HF_HUB_OFFLINE=1); run once with network access or point HF_HUB_CACHE/HF_HOME at a cache that has it",
                    opts.cache_dir.display()
                )));
            }
            return Ok(Self {
                name: format!("{id} (cached snapshot {})", snapshot.display()),
                kind: RepoKind::Local(snapshot),
            });
        }
        let api =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
                .with_token(opts.token.clone())
                .with_progress(false)
                .build()
                .map_err(|e| Error::Weights(format!("hub client: {e}")))?;
        let repo = api.repo(hf_hub::Repo::with_revision(
            id.to_string(),
            hf_hub::RepoType::Model,
            rev.to_string(),
        ));
        let info = repo.info().map_err(|e| {
            Error::Weights(format!(
                "{id} (revision {rev}): cannot list the repository on the hub: {e}; \
                 check the id, HF_TOKEN for gated models, or use --offline with a filled cache"
            ))
        })?;
        Ok(Self {
            name: format!("{id} (revision {rev})"),
            kind: RepoKind::Hub {
                repo: Box::new(repo),
                listing: info.siblings.into_iter().map(|s| s.rfilename).collect(),
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the file exists (locally, or in the hub listing).
    pub fn has(&self, rel: &str) -> bool {
        match &self.kind {
            RepoKind::Local(dir) => dir.join(rel).is_file(),
            RepoKind::Hub { listing, .. } => listing.iter().any(|f| f == rel),
        }
    }

    /// A local path for `rel`, downloading it into the cache if needed.
    pub fn get(&self, rel: &str) -> Result<PathBuf> {
        match &self.kind {
            RepoKind::Local(dir) => {
                let p = dir.join(rel);
                match p.is_file() {
                    true => Ok(p),
                    false => Err(Error::Weights(format!("{}: missing file {rel}", self.name))),
                }
            }
            RepoKind::Hub { repo, .. } => repo
                .get(rel)
                .map_err(|e| Error::Weights(format!("{}: downloading {rel}: {e}", self.name))),
        }
    }

    /// Local paths of the `wanted` files that exist, by their name in the repository; all
    /// missing required files are named in one error.
    pub fn get_all(&self, wanted: &[(&str, bool)]) -> Result<HashMap<String, PathBuf>> {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(rel, required)| *required && !self.has(rel))
            .map(|(rel, _)| *rel)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Weights(format!(
                "{} lacks {}",
                self.name,
                missing.join(", ")
            )));
        }
        wanted
            .iter()
            .filter(|(rel, _)| self.has(rel))
            .map(|(rel, _)| Ok((rel.to_string(), self.get(rel)?)))
            .collect()
    }
}

/// Where a model tensor lives in a file, and how to cut it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Name in the file.
    pub key: String,
    /// `Some((i, n))`: the i-th of n equal row blocks (fused q/k/v projections).
    pub rows: Option<(usize, usize)>,
    /// Drop trailing 1×1 dimensions (1×1 convolutions stored where a linear is expected).
    pub squeeze: bool,
}

impl TensorRef {
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            rows: None,
            squeeze: false,
        }
    }
}

enum TensorFile {
    Safetensors {
        mmap: memmap2::Mmap,
        data_start: usize,
        infos: HashMap<String, safetensors::tensor::TensorInfo>,
    },
    Pickle(candle_core::pickle::PthTensors),
}

impl TensorFile {
    fn open(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let bad = |e: &dyn std::fmt::Display| Error::Weights(format!("{}: {e}", path.display()));
        if ext == "safetensors" {
            let file = std::fs::File::open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            // SAFETY: the file is only read; a concurrent truncation would be a user error
            // that at worst crashes the process, as with every mmap-based loader.
            let mmap = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
            let (header, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(&e))?;
            let infos = meta
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.clone()))
                .collect();
            Ok(Self::Safetensors {
                mmap,
                data_start: 8 + header,
                infos,
            })
        } else if matches!(ext.as_str(), "ckpt" | "pth" | "pt" | "bin") {
            // SD checkpoints keep the weights under "state_dict"; plain .pth files do not.
            let keys = [Some("state_dict"), None];
            Ok(Self::Pickle(crate::weights::pickle_guard::open_pth(
                path, &keys,
            )?))
        } else {
            Err(Error::Weights(format!(
                "{}: unknown weight format (expected .safetensors, .ckpt or .pth)",
                path.display()
            )))
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors { infos, .. } => infos.keys().cloned().collect(),
            Self::Pickle(p) => p.tensor_infos().keys().cloned().collect(),
        }
    }

    fn read(&self, key: &str) -> candle_core::Result<Option<Tensor>> {
        match self {
            Self::Safetensors {
                mmap,
                data_start,
                infos,
            } => {
                let Some(info) = infos.get(key) else {
                    return Ok(None);
                };
                let dtype = match info.dtype {
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F64 => DType::F64,
                    safetensors::Dtype::I64 => DType::I64,
                    other => candle_core::bail!("{key}: unsupported dtype {other:?}"),
                };
                let (start, end) = (
                    data_start + info.data_offsets.0,
                    data_start + info.data_offsets.1,
                );
                let t =
                    Tensor::from_raw_buffer(&mmap[start..end], dtype, &info.shape, &Device::Cpu)?;
                release_pages(mmap, start, end);
                Ok(Some(t))
            }
            Self::Pickle(p) => crate::weights::pickle_guard::read_tensor(p, key),
        }
    }
}

/// Drops the mapped pages of a tensor that has been copied out: they are file-backed and
/// clean, so the kernel simply unmaps them and they stop counting in the resident set.
fn release_pages(mmap: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let aligned = start / PAGE * PAGE;
    // SAFETY: MADV_DONTNEED on a private read-only file mapping only discards pages that are
    // re-read from the file on the next access; no data can be lost.
    let _ = unsafe {
        mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, aligned, end - aligned)
    };
}

/// A change made to each tensor as it is read: (model name, tensor) → tensor.
pub type Transform = Box<dyn Fn(&str, Tensor) -> Result<Tensor> + Send + Sync>;

/// Tensors of one model component, under the names the model code asks for; a candle
/// `VarBuilder` backend.
pub struct TensorStore {
    files: Vec<TensorFile>,
    /// name -> (file index, where in it)
    index: HashMap<String, (usize, TensorRef)>,
    what: String,
    /// Applied to every tensor as it is read, before the dtype conversion (LoRA fuses its
    /// updates here).
    transform: Option<Transform>,
    /// Bytes of the tensors handed out so far, in the dtype asked for ([`Self::loaded`]).
    loaded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TensorStore {
    /// Opens weight files; `rename` maps each stored name to the name the model uses (and
    /// how to cut it), or `None` to ignore it.
    pub fn open(
        paths: &[PathBuf],
        what: &str,
        mut rename: impl FnMut(&str) -> Vec<(String, TensorRef)>,
    ) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = TensorFile::open(path)?;
            for name in file.names() {
                for (model_name, r) in rename(&name) {
                    index.insert(model_name, (i, r));
                }
            }
            files.push(file);
        }
        Ok(Self {
            files,
            index,
            what: what.to_string(),
            transform: None,
            loaded: Default::default(),
        })
    }

    /// Every stored name as the model name.
    pub fn open_plain(paths: &[PathBuf], what: &str) -> Result<Self> {
        Self::open(paths, what, |name| {
            vec![(name.to_string(), TensorRef::key(name))]
        })
    }

    /// Names of all stored tensors (before renaming) of the first file.
    pub fn stored_names(path: &Path) -> Result<Vec<String>> {
        Ok(TensorFile::open(path)?.names())
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The model names of all tensors.
    pub fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// The same store with `transform(model name, tensor)` applied to every tensor it reads.
    pub fn with_transform(mut self, transform: Transform) -> Self {
        self.transform = Some(transform);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// A counter of the bytes this store hands out (it lives on inside a `VarBuilder`): what
    /// a model built from it holds on its device, for the GPU memory plan.
    pub fn loaded(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.loaded)
    }

    /// A tensor by its model name, in f32 on the CPU (to read a shape the config lacks).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.load(name, DType::F32, &Device::Cpu)
            .map_err(|e| Error::Weights(e.to_string()))
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some((file, r)) = self.index.get(name) else {
            candle_core::bail!("{}: tensor {name} not found in the weights", self.what)
        };
        let Some(mut t) = self.files[*file].read(&r.key)? else {
            candle_core::bail!("{}: tensor {} listed but unreadable", self.what, r.key)
        };
        if let Some((i, n)) = r.rows {
            let rows = t.dim(0)? / n;
            t = t.narrow(0, i * rows, rows)?.contiguous()?;
        }
        if r.squeeze {
            while t.rank() > 2 && t.dims().last() == Some(&1) {
                t = t.squeeze(t.rank() - 1)?;
            }
        }
        if let Some(transform) = &self.transform {
            t = transform(name, t).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        let t = t.to_dtype(dtype)?.to_device(dev)?;
        self.loaded.fetch_add(
            (t.elem_count() * dtype.size_in_bytes()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(t)
    }
}

impl SimpleBackend for TensorStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{}: tensor {name} has shape {:?}, the config implies {:?}",
                self.what,
                t.dims(),
                s.dims()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.safetensors");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            ModelSource::parse(dir.path().to_str().unwrap()).unwrap(),
            ModelSource::Folder(dir.path().to_path_buf())
        );
        assert_eq!(
            ModelSource::parse(file.to_str().unwrap()).unwrap(),
            ModelSource::File(file.clone())
        );
        assert_eq!(
            ModelSource::parse("stabilityai/stable-diffusion-2-base").unwrap(),
            ModelSource::Hub("stabilityai/stable-diffusion-2-base".into())
        );
        let e = ModelSource::parse("./no/such/model").unwrap_err();
        assert!(e.to_string().contains("neither an existing file"), "{e}");
    }

    #[test]
    fn offline_flag_values() {
        for v in ["1", "true", "YES", " on "] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "false", "", "off"] {
            assert!(!truthy(v), "{v}");
        }
    }

    #[test]
    fn offline_without_cache_names_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let opts = HubOptions {
            offline: true,
            cache_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let e = RepoFiles::hub("owner/model", &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not in the Hugging Face cache") && e.contains("HF_HUB_OFFLINE"),
            "{e}"
        );
    }
}
