//! The model parity tests: our models against diffusers' / PyTorch's goldens
//! (tools/reference), in one binary. On the CPU by default; `VIDEO_STYLIZER_TEST_DEVICE=cuda`
//! runs the same replays on a GPU, which is how tools/gpu_check.sh checks the CUDA build with
//! the one test binary it carries.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/tiny_sd.rs"]
mod tiny_sd;

mod animatediff;
mod controlnet;
mod cross_frame_parity;
mod esrgan;
mod half_precision;
mod img2img_loop;
mod img2img_parity;
mod lora;
mod noise_warp;
mod rerender;
mod sd_models;
mod stream;
mod taesd;
