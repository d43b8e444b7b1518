pub mod img2img;
pub mod noise;
pub mod schedulers;
