//! LoRA fused at load against diffusers' `load_lora_weights` + `fuse_lora` on the tiny SD-1
//! fixture (tools/reference/golden_lora.py): kohya keys with alpha ≠ rank (linear, 1×1 and 3×3
//! conv LoRAs, UNet and text encoder), PEFT keys, and both at once; text encoder and UNet
//! outputs at 1e-4. A LoRA for another model, or a file with no LoRA in it, is refused.

use candle_core::DType;
use stylizer::nets::sd::cross_frame::SelfAttention;
use stylizer::sd::model::{LoadOptions, SdFiles, SdModel};
use stylizer::weights::ModelSource;
use stylizer::NoProgress;

use crate::common;
use crate::common::max_abs;
use crate::tiny_sd::fixtures;

fn lora(name: &str, scale: f64) -> (ModelSource, f64) {
    (ModelSource::File(fixtures().join("lora").join(name)), scale)
}

fn files(variant: &str, loras: Vec<(ModelSource, f64)>) -> stylizer::Result<SdFiles> {
    let opts = LoadOptions {
        loras,
        ..LoadOptions::new(common::device())
    };
    SdFiles::resolve(
        &ModelSource::Folder(fixtures().join(variant)),
        &opts,
        &mut NoProgress,
    )
}

#[test]
fn fused_loras_match_diffusers() {
    for (case, loras) in [
        ("kohya", vec![lora("kohya.safetensors", 0.8)]),
        ("peft", vec![lora("peft.safetensors", 1.0)]),
        (
            "both",
            vec![
                lora("kohya.safetensors", 0.8),
                lora("peft.safetensors", 1.0),
            ],
        ),
    ] {
        let path = fixtures().join(format!("golden/tiny-sd/lora_{case}.safetensors"));
        let g = common::load_tensors(path);
        let files = files("tiny-sd", loras).unwrap();
        files.check_loras().unwrap();
        let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
        let text = files.text_encoder().unwrap().forward(&ids).unwrap();
        let e_text = max_abs(&text.last_hidden_state, &g["text_out"]);
        let model = SdModel::load(&files, &mut NoProgress).unwrap();
        let t = g["timestep"].to_dtype(DType::F64).unwrap();
        let t = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let out = model
            .unet(
                &g["sample"],
                &t,
                &g["encoder_hidden_states"],
                &mut SelfAttention::Own,
                None,
            )
            .unwrap();
        let e_unet = max_abs(&out, &g["unet_out"]);
        println!("LoRA {case}: text encoder {e_text:.2e}, UNet {e_unet:.2e}");
        assert!(
            e_text < 1e-4 && e_unet < 1e-4,
            "{case}: text {e_text}, unet {e_unet}"
        );
    }
    // Without the LoRA the outputs are far from the fused ones: the goldens test the fusion.
    let g = candle_core::safetensors::load(
        fixtures().join("golden/tiny-sd/lora_kohya.safetensors"),
        &common::device(),
    )
    .unwrap();
    let model = SdModel::load(&files("tiny-sd", vec![]).unwrap(), &mut NoProgress).unwrap();
    let out = model
        .unet(
            &g["sample"],
            &[501.0],
            &g["encoder_hidden_states"],
            &mut SelfAttention::Own,
            None,
        )
        .unwrap();
    assert!(max_abs(&out, &g["unet_out"]) > 1e-2);
}

#[test]
fn a_lora_for_another_model_is_refused() {
    let other = files("tiny-sd2", vec![lora("kohya.safetensors", 1.0)]).unwrap();
    let err = other.check_loras().unwrap_err().to_string();
    assert!(err.contains("lacks") && !err.contains('\n'), "{err}");
    // A weight file with no LoRA tensors.
    let not_lora = (
        ModelSource::File(fixtures().join("taesd/diffusion_pytorch_model.safetensors")),
        1.0,
    );
    let plain = files("tiny-sd", vec![not_lora]).unwrap();
    let err = plain.check_loras().unwrap_err().to_string();
    assert!(err.contains("no LoRA tensors"), "{err}");
}
