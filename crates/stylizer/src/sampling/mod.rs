//! Sampling: the img2img denoising loop of one frame ([`img2img`]), AnimateDiff's windows of
//! frames ([`animate`]), frame stacks restyled in order ([`frames`]), where the noise comes from
//! ([`noise`]), the schedulers ([`schedulers`]) and the few-step settings of `--fast` ([`fast`]).
pub mod animate;
pub mod fast;
pub mod frames;
pub mod img2img;
pub mod noise;
pub mod schedulers;
