//! A decoded video frame: 8-bit RGB, row-major, no padding (ffmpeg `rgb24`).

/// One RGB frame; `data.len() == width * height * 3`.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Frame {
    /// Bytes of an `rgb24` frame of this size.
    pub fn byte_len(width: u32, height: u32) -> usize {
        width as usize * height as usize * 3
    }

    /// Wraps existing `rgb24` bytes; panics if the length does not match the size.
    pub fn from_rgb(width: u32, height: u32, data: Vec<u8>) -> Self {
        assert_eq!(
            data.len(),
            Self::byte_len(width, height),
            "rgb24 buffer size"
        );
        Self {
            width,
            height,
            data,
        }
    }

    /// The frame as a `[1, 3, H, W]` f32 tensor in [0, 1] (v / 255, as torchvision and
    /// diffusers' image processor compute it).
    pub fn to_tensor(&self, device: &candle_core::Device) -> crate::Result<candle_core::Tensor> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut planes = vec![0f32; 3 * w * h];
        for (i, px) in self.data.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                planes[c * w * h + i] = v as f32 / 255.0;
            }
        }
        Ok(candle_core::Tensor::from_vec(planes, (1, 3, h, w), device)?)
    }

    /// A frame from a `[1, 3, H, W]` or `[3, H, W]` tensor in [0, 1]: clamped, × 255 and
    /// rounded half to even (numpy's `round`, which diffusers uses to make 8-bit images).
    pub fn from_tensor(t: &candle_core::Tensor) -> crate::Result<Self> {
        let t = match t.rank() {
            4 => t.squeeze(0)?,
            _ => t.clone(),
        };
        let (c, h, w) = t.dims3()?;
        if c != 3 {
            return Err(crate::Error::Model(format!(
                "an RGB frame needs 3 channels, the tensor has {c}"
            )));
        }
        Ok(Self::from_unit_rgb(w as u32, h as u32, &interleaved(&t)?))
    }

    /// A frame from interleaved RGB values in [0, 1], converted as
    /// [`from_tensor`](Frame::from_tensor) does.
    pub fn from_unit_rgb(width: u32, height: u32, rgb: &[f32]) -> Self {
        let data = rgb
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
            .collect();
        Self::from_rgb(width, height, data)
    }

    /// The pixels as interleaved RGB values in [0, 1] (v / 255).
    pub fn to_unit_rgb(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32 / 255.0).collect()
    }
}

/// A `[C, H, W]` tensor as f32 values interleaved by pixel (HWC): the layout of frames and of
/// the images and latents that [`crate::temporal`] warps.
pub fn interleaved(t: &candle_core::Tensor) -> crate::Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1()?)
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip_keeps_every_byte() {
        let data: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let f = Frame::from_rgb(5, 3, data);
        let t = f.to_tensor(&candle_core::Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 3, 5]);
        // Channel planes: the green value of pixel (x=1, y=0) is data[1 * 3 + 1].
        let g: f32 = t
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(g, f.data[4] as f32 / 255.0);
        assert_eq!(Frame::from_tensor(&t).unwrap(), f);
    }

    #[test]
    fn from_tensor_clamps_and_rounds() {
        let t = candle_core::Tensor::new(&[-0.5f32, 0.2, 0.999, 2.0], &candle_core::Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4))
            .unwrap()
            .repeat((3, 1, 1))
            .unwrap();
        let f = Frame::from_tensor(&t).unwrap();
        assert_eq!((f.width, f.height), (4, 1));
        assert_eq!(
            &f.data[..12],
            &[0, 0, 0, 51, 51, 51, 255, 255, 255, 255, 255, 255]
        );
    }
}
