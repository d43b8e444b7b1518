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
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}
