//! Convolutions on the CPU without im2col, in the two layouts the networks run in: NCHW on
//! candle tensors for the SD UNet and VAE ([`nchw`]), NHWC buffers for the Real-ESRGAN nets
//! ([`nhwc`], with Winograd for the wide layers). Each file says why its layout.
pub mod nchw;
pub mod nhwc;
