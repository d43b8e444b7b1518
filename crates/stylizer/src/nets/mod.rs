//! The networks, each as candle's shape (`Config` + `new(vb, &config)` + `forward`) with its
//! weight names as in the checkpoint: Stable Diffusion's ([`sd`]) and Real-ESRGAN's
//! ([`esrgan`]). Networks only: loading, sampling and video live above them.
pub mod esrgan;
pub mod sd;
