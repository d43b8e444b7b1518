//! Parity of the Stable Diffusion components with diffusers/transformers on the tiny
//! fixtures (tests/fixtures/sd, made by tools/reference/make_tiny_sd.py, golden_sd.py and
//! make_single_file_sd.py), and loading through every kind of model source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use stylizer::nets::sd::cross_frame::SelfAttention;
use stylizer::nets::sd::vae::VaeTiling;
use stylizer::sd::model::{LoadOptions, SdFiles, SdModel};
use stylizer::sd::tokenizer::ClipTokenizer;
use stylizer::weights::{HubOptions, ModelSource};
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;

const VARIANTS: [&str; 2] = ["tiny-sd", "tiny-sd2"];
const PROMPTS: [&str; 3] = [
    "a photograph of an astronaut riding a horse",
    "A watercolor painting of a CAT, 4k!!",
    "",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd")
}

fn golden(variant: &str, part: &str) -> HashMap<String, Tensor> {
    let path = fixtures()
        .join("golden")
        .join(variant)
        .join(format!("{part}.safetensors"));
    common::load_tensors(&path)
}

fn check(what: &str, ours: &Tensor, theirs: &Tensor, tol: f32) {
    let d = max_abs(ours, theirs);
    println!("{what}: max abs {d:.3e}");
    assert!(d <= tol, "{what}: max abs {d:e} > {tol:e}");
}

fn options() -> LoadOptions {
    LoadOptions {
        hub: HubOptions::default(),
        vae_tiling: VaeTiling::Off,
        ..LoadOptions::new(common::device())
    }
}

fn resolve(source: ModelSource, opts: &LoadOptions) -> SdFiles {
    SdFiles::resolve(&source, opts, &mut NoProgress).unwrap()
}

fn folder(variant: &str) -> ModelSource {
    ModelSource::Folder(fixtures().join(variant))
}

fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// Text encoder, UNet (shared and per-batch timesteps) and VAE of `files` against the goldens.
fn check_all_parts(variant: &str, files: &SdFiles, label: &str) {
    let g = golden(variant, "text_encoder");
    let out = files
        .text_encoder()
        .unwrap()
        .forward(&ids_u32(&g["input_ids"]))
        .unwrap();
    check(
        &format!("{label} text last_hidden_state"),
        &out.last_hidden_state,
        &g["last_hidden_state"],
        1e-4,
    );
    check(
        &format!("{label} text pooler_output"),
        &out.pooler_output,
        &g["pooler_output"],
        1e-4,
    );

    let model = SdModel::load(files, &mut NoProgress).unwrap();
    let g = golden(variant, "unet");
    let t = g["timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let out = model
        .unet(
            &g["sample"],
            &[t],
            &g["encoder_hidden_states"],
            &mut SelfAttention::Own,
            None,
        )
        .unwrap();
    check(&format!("{label} unet out"), &out, &g["out"], 1e-4);
    let ts: Vec<f64> = g["timesteps2"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let out2 = model
        .unet(
            &g["sample"],
            &ts,
            &g["encoder_hidden_states"],
            &mut SelfAttention::Own,
            None,
        )
        .unwrap();
    check(
        &format!("{label} unet out2 (per-batch timesteps)"),
        &out2,
        &g["out2"],
        1e-4,
    );

    let g = golden(variant, "vae");
    let (mean, logvar) = model.vae_encode(&g["image"]).unwrap();
    check(
        &format!("{label} vae latent_mean"),
        &mean,
        &g["latent_mean"],
        1e-4,
    );
    check(
        &format!("{label} vae latent_logvar"),
        &logvar,
        &g["latent_logvar"],
        1e-4,
    );
    let decoded = model.vae_decode(&g["latent_mean"]).unwrap();
    check(
        &format!("{label} vae decoded"),
        &decoded,
        &g["decoded"],
        5e-4,
    );
}

#[test]
fn folder_models_match_diffusers() {
    for variant in VARIANTS {
        let files = resolve(folder(variant), &options());
        check_all_parts(variant, &files, variant);
    }
}

#[test]
fn single_file_checkpoints_match_diffusers() {
    // Configs, tokenizer and scheduler come from a folder without any weights, so every
    // tensor is read from the converted checkpoint.
    for (variant, file) in [
        ("tiny-sd", "tiny-sd.safetensors"),
        ("tiny-sd2", "tiny-sd2.ckpt"),
    ] {
        let configs = tempfile::tempdir().unwrap();
        for rel in [
            "scheduler/scheduler_config.json",
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "tokenizer/tokenizer.json",
            "tokenizer/tokenizer_config.json",
        ] {
            let to = configs.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(fixtures().join(variant).join(rel), to).unwrap();
        }
        let opts = LoadOptions {
            config_source: Some(ModelSource::Folder(configs.path().to_path_buf())),
            ..options()
        };
        let files = resolve(
            ModelSource::File(fixtures().join("single-file").join(file)),
            &opts,
        );
        check_all_parts(variant, &files, file);
    }
}

/// A hub cache laid out as `huggingface_hub` / `hf-hub` write it: blobs named by hash,
/// snapshot files as symlinks to them, `refs/main` holding the commit.
fn fake_hub_cache(variant: &str, id: &str, commit: &str) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache
        .path()
        .join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let src = fixtures().join(variant);
    let mut stack = vec![src.clone()];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            n += 1;
            let blob = repo.join("blobs").join(format!("{n:040x}"));
            std::fs::copy(&path, &blob).unwrap();
            let link = snapshot.join(path.strip_prefix(&src).unwrap());
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&blob, &link).unwrap();
        }
    }
    cache
}

#[test]
fn hub_cache_offline_loads_and_names_missing_files() {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let cache = fake_hub_cache("tiny-sd2", "tests/tiny-sd2", commit);
    let opts = LoadOptions {
        hub: HubOptions {
            offline: true,
            cache_dir: cache.path().to_path_buf(),
            ..HubOptions::default()
        },
        ..options()
    };
    let source = ModelSource::Hub("tests/tiny-sd2".into());
    let files = resolve(source.clone(), &opts);
    check_all_parts("tiny-sd2", &files, "hub cache");

    // A revision given as the commit itself resolves without refs/.
    let by_commit = LoadOptions {
        hub: HubOptions {
            revision: Some(commit.into()),
            ..opts.hub.clone()
        },
        ..opts.clone()
    };
    assert!(SdFiles::resolve(&source, &by_commit, &mut NoProgress).is_ok());

    // An fp16 variant that is not cached is named, as is a deleted weight file.
    let fp16 = LoadOptions {
        hub: HubOptions {
            variant: Some("fp16".into()),
            ..opts.hub.clone()
        },
        ..opts.clone()
    };
    let e = SdFiles::resolve(&source, &fp16, &mut NoProgress)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unet/diffusion_pytorch_model.fp16.safetensors"),
        "{e}"
    );
    assert!(e.contains("text_encoder/model.fp16.safetensors"), "{e}");
    let snapshot = cache
        .path()
        .join("models--tests--tiny-sd2/snapshots")
        .join(commit);
    std::fs::remove_file(snapshot.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = SdFiles::resolve(&source, &opts, &mut NoProgress)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lacks vae/diffusion_pytorch_model.safetensors"),
        "{e}"
    );

    let e = SdFiles::resolve(
        &ModelSource::Hub("tests/not-cached".into()),
        &opts,
        &mut NoProgress,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
}

#[test]
fn tokenizer_matches_transformers_with_either_file_set() {
    for variant in VARIANTS {
        let g = golden(variant, "text_encoder");
        let expected: Vec<Vec<u32>> = ids_u32(&g["input_ids"]).to_vec2().unwrap();
        let dir = fixtures().join(variant).join("tokenizer");
        let fast = ClipTokenizer::from_dir(&dir, 77).unwrap();
        // The hub's SD repositories ship only vocab.json + merges.txt.
        let slow_dir = tempfile::tempdir().unwrap();
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(dir.join(f), slow_dir.path().join(f)).unwrap();
        }
        let slow = ClipTokenizer::from_dir(slow_dir.path(), 77).unwrap();
        for (prompt, want) in PROMPTS.iter().zip(&expected) {
            assert_eq!(&fast.encode(prompt).unwrap(), want, "{variant} {prompt:?}");
            assert_eq!(
                &slow.encode(prompt).unwrap(),
                want,
                "{variant} {prompt:?} (vocab+merges)"
            );
        }
        // The pad token differs between SD 1 (end token) and SD 2 ("!").
        let pad = if variant == "tiny-sd" { 999 } else { 0 };
        assert_eq!(fast.pad_id(), pad);
        let long = "a photograph of an astronaut ".repeat(40);
        let ids = fast.encode(&long).unwrap();
        assert_eq!(
            (ids.len(), ids[0], ids[76]),
            (77, 998, 999),
            "truncated with start and end tokens"
        );
    }
}

#[test]
fn encode_prompts_orders_negative_first() {
    let files = resolve(folder("tiny-sd2"), &options());
    let g = golden("tiny-sd2", "text_encoder");
    let emb = files.encode_prompts(PROMPTS[0], Some("")).unwrap();
    assert_eq!(emb.dims(), [2, 77, 64]);
    let want = Tensor::stack(
        &[
            g["last_hidden_state"].get(2).unwrap(),
            g["last_hidden_state"].get(0).unwrap(),
        ],
        0,
    )
    .unwrap();
    check("encode_prompts [negative, prompt]", &emb, &want, 1e-4);
    assert_eq!(
        files.encode_prompts(PROMPTS[0], None).unwrap().dims(),
        [1, 77, 64]
    );
}

#[test]
fn tiled_vae_matches_diffusers_enable_tiling() {
    for variant in VARIANTS {
        let opts = LoadOptions {
            vae_tiling: VaeTiling::On,
            ..options()
        };
        let model = SdModel::load(&resolve(folder(variant), &opts), &mut NoProgress).unwrap();
        let g = golden(variant, "vae_tiled");
        let (mean, logvar) = model.vae_encode(&g["image"]).unwrap();
        check(
            &format!("{variant} tiled vae latent_mean"),
            &mean,
            &g["latent_mean"],
            1e-4,
        );
        check(
            &format!("{variant} tiled vae latent_logvar"),
            &logvar,
            &g["latent_logvar"],
            1e-4,
        );
        let decoded = model.vae_decode(&g["latent_mean"]).unwrap();
        check(
            &format!("{variant} tiled vae decoded"),
            &decoded,
            &g["decoded"],
            5e-4,
        );
    }
}

/// Text embeddings of the wrong width (parts of two models that the resolve check could not
/// see) fail in the UNet with one line that names the network and its block, not a kernel.
#[test]
fn a_network_error_names_the_network_and_the_block() {
    let (_, text, model, _) = crate::tiny_sd::load("tiny-sd2");
    let narrow = text.narrow(2, 0, 32).unwrap();
    let latents = Tensor::zeros((2, 4, 12, 14), DType::F32, text.device()).unwrap();
    let e = model
        .unet(&latents, &[501.0], &narrow, &mut SelfAttention::Own, None)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.starts_with("model: the UNet: down_blocks.0: ") && !e.contains('\n'),
        "{e}"
    );
    assert!(!e.contains("banded"), "{e}");
}
