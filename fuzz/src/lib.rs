//! What each fuzz target does with its bytes: write them where a user's file would be and run
//! the tool's own loading code on them, as far as a bad file can get (every tensor read, every
//! config built). Errors are the expected outcome; a panic, a hang or an allocation beyond the
//! fuzzer's limit is a finding. Shared with crates/stylizer/tests/fuzz_regressions.rs.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;
use stylizer::nets::sd::config::UNetConfig;
use stylizer::sd::model::{ControlNetFiles, LoadOptions, MotionAdapterFiles};
use stylizer::weights::{ModelSource, TensorStore};

/// Sections of one input, for targets that need several files: split on this line.
pub const SECTION: &[u8] = b"\n--8<--\n";

fn sections(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SECTION.len()).position(|w| w == SECTION) {
        out.push(&rest[..i]);
        rest = &rest[i + SECTION.len()..];
    }
    out.push(rest);
    out
}

/// A private folder in memory where there is one (many runs per second).
fn folder() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary folder")
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("making the input's folder");
    }
    std::fs::write(&p, data).expect("writing the input");
    p
}

/// A weight file through every loader: the SD tensor store (every tensor read), the
/// single-file ControlNet reader (key layout, hint block widths) and the Real-ESRGAN loader
/// (then its architecture detection).
fn weights(data: &[u8], name: &str) {
    let dir = folder();
    load(&write(dir.path(), name, data));
}

fn load(path: &Path) {
    let path = path.to_path_buf();
    if let Ok(store) = TensorStore::open_plain(std::slice::from_ref(&path), "fuzz") {
        for name in TensorStore::stored_names(&path).unwrap_or_default() {
            let _ = store.get_unchecked(&name, DType::F32, &Device::Cpu);
        }
    }
    if let Ok(unet) = UNetConfig::from_json(&serde_json::json!({})) {
        let opts = LoadOptions::new(Device::Cpu);
        let _ = ControlNetFiles::resolve(&ModelSource::File(path.clone()), &opts, &unet);
        // An original AnimateDiff motion module: its layout is read from the tensors.
        let _ = MotionAdapterFiles::resolve(&ModelSource::File(path.clone()), &opts);
    }
    if let Ok(ts) = stylizer::upscale::load::load_weights(&path) {
        let _ = stylizer::nets::esrgan::SrConfig::detect(&ts);
    }
}

/// `.safetensors`: header, tensor table, data offsets.
pub fn safetensors(data: &[u8]) {
    weights(data, "model.safetensors");
}

/// `.pth` / `.ckpt` as a whole file: the zip container and what is in it.
pub fn checkpoint(data: &[u8]) {
    weights(data, "model.pth");
}

/// The pickle program of a checkpoint (first section) with one storage `archive/data/0`
/// (second section), in a well-formed zip, so that mutations reach the pickle reader instead
/// of failing the zip's checksums.
pub fn pickle(data: &[u8]) {
    use std::io::Write;
    let parts = sections(data);
    let dir = folder();
    let path = dir.path().join("model.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("creating the zip"));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let storage = parts.get(1).copied().unwrap_or_default();
    for (name, bytes) in [("archive/data.pkl", parts[0]), ("archive/data/0", storage)] {
        zip.start_file(name, stored).expect("a zip entry");
        zip.write_all(bytes).expect("writing the zip");
    }
    zip.finish().expect("finishing the zip");
    load(&path);
}

/// ncnn `.param` (text graph) and `.bin` (weights), as two sections.
pub fn ncnn(data: &[u8]) {
    let parts = sections(data);
    let dir = folder();
    let param = write(dir.path(), "model.param", parts[0]);
    let bin = write(
        dir.path(),
        "model.bin",
        parts.get(1).copied().unwrap_or_default(),
    );
    if let Ok(ts) = stylizer::upscale::load::load_ncnn(&param, &bin) {
        let _ = stylizer::nets::esrgan::SrConfig::detect(&ts);
    }
}

/// A diffusers `config.json` / `scheduler_config.json` into every config we build.
pub fn configs(data: &[u8]) {
    use stylizer::nets::sd::config::{ClipTextConfig, ControlNetConfig, VaeConfig};
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = UNetConfig::from_json(&json);
    let _ = ControlNetConfig::from_json(&json);
    let _ = stylizer::nets::sd::config::TinyVaeConfig::from_json(&json);
    let _ = stylizer::nets::sd::config::MotionAdapterConfig::from_json(&json);
    let _ = VaeConfig::from_json(&json);
    let _ = ClipTextConfig::from_json(&json);
    if let Ok(s) = stylizer::sampling::schedulers::SchedulerConfig::from_value(&json) {
        for kind in stylizer::sampling::schedulers::SchedulerKind::ALL {
            let _ = kind.build(&s, 10);
        }
    }
}

/// The files of [`model_folder`]'s input, one per section, in order.
pub const MODEL_FOLDER_FILES: [&str; 6] = [
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
];

/// A diffusers model folder whose parts may come from different models
/// ([`MODEL_FOLDER_FILES`]), with empty weight files; resolved as `-m FOLDER` is, which checks
/// that the parts fit before any weight loads.
pub fn model_folder(data: &[u8]) {
    let parts = sections(data);
    let dir = folder();
    for (name, part) in MODEL_FOLDER_FILES.iter().zip(&parts) {
        write(dir.path(), name, part);
    }
    for weights in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        write(dir.path(), weights, b"");
    }
    let source = ModelSource::Folder(dir.path().to_path_buf());
    let opts = LoadOptions::new(Device::Cpu);
    let _ = stylizer::sd::model::SdFiles::resolve(&source, &opts, &mut stylizer::NoProgress);
}

/// A tokenizer folder: `tokenizer_config.json`, `vocab.json`, `merges.txt` and, when the
/// fourth section is there, `tokenizer.json`; then a prompt through it.
pub fn tokenizer(data: &[u8]) {
    let parts = sections(data);
    let dir = folder();
    let names = [
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
    ];
    for (name, part) in names.iter().zip(&parts) {
        write(dir.path(), name, part);
    }
    if let Ok(t) = stylizer::sd::tokenizer::ClipTokenizer::from_dir(dir.path(), 77) {
        let _ = t.encode("a watercolor painting of a cat, 8k");
    }
}

/// An image for `upscale` (png, jpg or webp by the first byte), taken apart and put back.
pub fn image(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let ext = ["png", "jpg", "webp"][kind as usize % 3];
    let dir = folder();
    let path = write(dir.path(), &format!("in.{ext}"), bytes);
    if let Ok(img) = stylizer::upscale::images::read_image(&path) {
        let planes = stylizer::upscale::images::Planes::split(&img);
        let _ = planes.compose();
    }
}
