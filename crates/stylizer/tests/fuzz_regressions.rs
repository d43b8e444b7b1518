//! Bad files a user could hand the tool, through the same code the fuzz targets run
//! (fuzz/src/lib.rs): every input a target ever failed on (fuzz/regressions/<target>/), and the
//! classic hostile shapes made here. Each must end in an error — no panic, no hang, no
//! allocation of what the file merely claims.

#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entries;

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn regressions() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions")
}

/// Runs `target` on `data` and checks it returns within the fuzzer's time limit.
fn survives(what: &str, target: Target, data: &[u8]) {
    let t0 = Instant::now();
    target(data);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "{what}: took {:?}",
        t0.elapsed()
    );
}

/// A fuzz target: what it does with one input.
type Target = fn(&[u8]);

#[test]
fn committed_fuzz_findings_stay_fixed() {
    let targets: [(&str, Target); 8] = [
        ("safetensors", entries::safetensors),
        ("checkpoint", entries::checkpoint),
        ("pickle", entries::pickle),
        ("ncnn", entries::ncnn),
        ("configs", entries::configs),
        ("model_folder", entries::model_folder),
        ("tokenizer", entries::tokenizer),
        ("image", entries::image),
    ];
    let mut replayed = 0;
    for (name, target) in targets {
        let Ok(dir) = std::fs::read_dir(regressions().join(name)) else {
            continue;
        };
        for file in dir.flatten() {
            let data = std::fs::read(file.path()).unwrap();
            survives(&file.path().display().to_string(), target, &data);
            replayed += 1;
        }
    }
    println!("{replayed} committed findings replayed");
}

/// safetensors: an 8-byte header length, then JSON.
fn safetensors_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

#[test]
fn hostile_safetensors_are_refused_before_allocating() {
    let f = entries::safetensors;
    // A header length of terabytes.
    let mut claim = (1u64 << 42).to_le_bytes().to_vec();
    claim.extend(b"{}");
    survives("header of 4 TB", f, &claim);
    // A tensor of 2^32 × 2^32 elements stored in 8 bytes.
    let huge = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    survives("2^64 elements", f, &safetensors_file(huge, 8));
    // Data past the end of the file.
    let past = r#"{"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#;
    survives("offset past the end", f, &safetensors_file(past, 16));
    // 2^32 tensors claimed by a header that holds none of them.
    let many = format!(r#"{{"__metadata__":{{"n":"{}"}}}}"#, u32::MAX);
    survives("metadata only", f, &safetensors_file(&many, 0));
}

#[test]
fn hostile_ncnn_and_configs_are_refused() {
    // A layer count of 2^32 and a weight blob that claims more than the file holds.
    let param = "7767517\n4294967295 4294967295\nInput input 0 1 data\nConvolution c 1 1 data out 0=64 1=3 5=1 6=4294967295\n";
    let mut data = param.as_bytes().to_vec();
    data.extend(entries::SECTION);
    data.extend([0x47, 0x6b, 0x30, 0x01, 0, 0, 0, 0]);
    survives("ncnn sizes", entries::ncnn, &data);
    // Configs with absurd sizes and deep nesting.
    let deep = "[".repeat(100_000);
    survives("deep json", entries::configs, deep.as_bytes());
    let wide = r#"{"block_out_channels":[4294967296],"down_block_types":["DownBlock2D"],"up_block_types":["UpBlock2D"],"layers_per_block":4294967296,"num_train_timesteps":18446744073709551615}"#;
    survives("huge config", entries::configs, wide.as_bytes());
}

#[test]
fn hostile_pickles_are_refused_before_candle_reads_them() {
    let f = entries::pickle;
    // Each of these aborted the process or tried to allocate what it claims, before the guard.
    let deep = [&b"\x80\x02"[..], &[b']'; 200_000], &[b'a'; 199_999], b"."].concat();
    survives("200 000-deep lists", f, &deep);
    let mut bomb = b"\x80\x02]q\x00".to_vec();
    for _ in 0..40 {
        bomb.extend(b"(h\x00h\x00tq\x00");
    }
    bomb.push(b'.');
    survives("memo copies doubling 40 times", f, &bomb);
    survives("a 4 GB string", f, b"\x80\x02X\xff\xff\xff\xff.");
    survives("no STOP", f, b"\x80\x02]]]]");
}

/// The model-folder target on the folder a new user assembled from two models (tiny SD-2's
/// UNet and VAE, tiny SD's text encoder and tokenizer) and on a folder of one model: both
/// resolve as far as the weights (empty here) without a panic.
#[test]
fn model_folders_of_one_or_two_models_survive() {
    let sd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd");
    let folder = |parts: [(&str, &str); 6]| {
        let files: Vec<Vec<u8>> = parts
            .iter()
            .map(|(model, file)| std::fs::read(sd.join(model).join(file)).unwrap())
            .collect();
        files.join(entries::SECTION)
    };
    let files = entries::MODEL_FOLDER_FILES;
    let one = folder(files.map(|f| ("tiny-sd2", f)));
    survives("one model", entries::model_folder, &one);
    let models = [
        "tiny-sd2", "tiny-sd2", "tiny-sd", "tiny-sd2", "tiny-sd", "tiny-sd",
    ];
    let two = folder(std::array::from_fn(|i| (models[i], files[i])));
    survives("two models", entries::model_folder, &two);
}
