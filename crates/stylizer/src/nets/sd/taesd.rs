//! The tiny auto-encoder TAESD (madebyollin/taesd, "Tiny AutoEncoder for Stable Diffusion",
//! Bohan 2023): the same latent space as SD's KL auto-encoder from about 1.2 M parameters per
//! half instead of 34 M / 49.5 M, so a 480p encode + decode takes a fraction of a second.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_tiny.py` (`AutoencoderTiny`) and
//! `models/autoencoders/vae.py` (`EncoderTiny`, `DecoderTiny`) with
//! `models/unets/unet_2d_blocks.py` (`AutoencoderTinyBlock`): weights under `encoder.layers.N`
//! / `decoder.layers.N` as the `nn.Sequential` numbers them. The encoder reads images in
//! [-1, 1] (shifted to TAESD's [0, 1]) and gives latents directly (no posterior to sample);
//! the decoder clamps latents with `tanh(x/3)·3` and returns [-1, 1].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nets::sd::config::TinyVaeConfig;
use crate::ops::conv::nchw::{conv2d, Conv2d};

fn conv3x3(vb: VarBuilder, cin: usize, cout: usize, stride: usize, bias: bool) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    if bias {
        conv2d(cin, cout, 3, cfg, vb)
    } else {
        Conv2d::new(candle_nn::conv2d_no_bias(cin, cout, 3, cfg, vb)?, cfg)
    }
}

/// diffusers `AutoencoderTinyBlock`: three 3×3 convs with ReLU between, a 1×1 skip when the
/// width changes, ReLU after the sum.
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl Block {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let c = vb.pp("conv");
        let skip = match cin == cout {
            true => None,
            false => {
                let cfg = Conv2dConfig::default();
                let inner = candle_nn::conv2d_no_bias(cin, cout, 1, cfg, vb.pp("skip"))?;
                Some(Conv2d::new(inner, cfg)?)
            }
        };
        Ok(Self {
            convs: [
                conv3x3(c.pp(0), cin, cout, 1, true)?,
                conv3x3(c.pp(2), cout, cout, 1, true)?,
                conv3x3(c.pp(4), cout, cout, 1, true)?,
            ],
            skip,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.convs[0].forward(xs)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        let skip = match &self.skip {
            Some(s) => s.forward(xs)?,
            None => xs.clone(),
        };
        self.convs[2].forward_residual(&h, &skip)?.relu()
    }
}

/// One entry of an encoder or decoder `nn.Sequential`.
enum Layer {
    Conv(Conv2d),
    Block(Block),
    Relu,
    Upsample,
}

fn run(layers: &[Layer], mut xs: Tensor) -> Result<Tensor> {
    for layer in layers {
        xs = match layer {
            Layer::Conv(c) => c.forward(&xs)?,
            Layer::Block(b) => b.forward(&xs)?,
            Layer::Relu => xs.relu()?,
            Layer::Upsample => {
                let (_, _, h, w) = xs.dims4()?;
                xs.upsample_nearest2d(2 * h, 2 * w)?
            }
        };
    }
    Ok(xs)
}

/// diffusers `AutoencoderTiny` (weights `encoder.layers.*`, `decoder.layers.*`).
pub struct AutoencoderTiny {
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    config: TinyVaeConfig,
}

impl AutoencoderTiny {
    /// The dtype it computes in (the weights').
    pub fn dtype(&self) -> candle_core::DType {
        match &self.encoder[0] {
            Layer::Conv(conv) => conv.dtype(),
            _ => unreachable!("the encoder starts with a convolution"),
        }
    }

    pub fn new(vb: VarBuilder, config: &TinyVaeConfig) -> Result<Self> {
        let c = config;
        // EncoderTiny: conv (stride 1 first, then stride 2 without bias), blocks; final conv.
        let vb_enc = vb.pp("encoder.layers");
        let mut encoder = Vec::new();
        for (i, (&ch, &n)) in c
            .encoder_block_out_channels
            .iter()
            .zip(&c.num_encoder_blocks)
            .enumerate()
        {
            let conv = match i {
                0 => conv3x3(vb_enc.pp(encoder.len()), c.in_channels, ch, 1, true)?,
                _ => conv3x3(vb_enc.pp(encoder.len()), ch, ch, 2, false)?,
            };
            encoder.push(Layer::Conv(conv));
            for _ in 0..n {
                encoder.push(Layer::Block(Block::new(vb_enc.pp(encoder.len()), ch, ch)?));
            }
        }
        let last = *c.encoder_block_out_channels.last().expect("checked");
        encoder.push(Layer::Conv(conv3x3(
            vb_enc.pp(encoder.len()),
            last,
            c.latent_channels,
            1,
            true,
        )?));

        // DecoderTiny: conv + ReLU, then per block: blocks, ×2 upsampling (all but the last),
        // conv (bias only on the last, to the output channels).
        let vb_dec = vb.pp("decoder.layers");
        let ch0 = c.decoder_block_out_channels[0];
        let mut decoder = vec![
            Layer::Conv(conv3x3(vb_dec.pp(0), c.latent_channels, ch0, 1, true)?),
            Layer::Relu,
        ];
        let n = c.decoder_block_out_channels.len();
        for (i, (&ch, &blocks)) in c
            .decoder_block_out_channels
            .iter()
            .zip(&c.num_decoder_blocks)
            .enumerate()
        {
            let last = i + 1 == n;
            for _ in 0..blocks {
                decoder.push(Layer::Block(Block::new(vb_dec.pp(decoder.len()), ch, ch)?));
            }
            if !last {
                decoder.push(Layer::Upsample);
            }
            let cout = if last { c.out_channels } else { ch };
            decoder.push(Layer::Conv(conv3x3(
                vb_dec.pp(decoder.len()),
                ch,
                cout,
                1,
                last,
            )?));
        }
        Ok(Self {
            encoder,
            decoder,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &TinyVaeConfig {
        &self.config
    }

    /// Latents `[b, 4, H/8, W/8]` (unscaled: multiply by `scaling_factor`, 1.0 for TAESD) of
    /// `image` `[b, 3, H, W]` in [-1, 1].
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        run(&self.encoder, ((image + 1.0)? / 2.0)?)
    }

    /// Image `[b, 3, H, W]` in about [-1, 1] from unscaled latents.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = ((latents / 3.0)?.tanh()? * 3.0)?;
        let xs = run(&self.decoder, xs)?;
        (xs * 2.0)? - 1.0
    }
}
