//! Compute kernels candle lacks or runs slowly, shared by the models.
pub mod conv;
pub mod group_norm;
pub mod softmax;
