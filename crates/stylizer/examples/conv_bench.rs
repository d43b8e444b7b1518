//! GFLOP/s of our 3×3 convs against candle's conv2d: the NHWC conv (`stylizer::ops::conv::nhwc`) on
//! the shapes of the super-resolution nets, the NCHW conv (`stylizer::ops::conv::nchw`) on the
//! shapes of the SD UNet and VAE at 848×480: `cargo run --release --example conv_bench`.

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2dConfig;
use stylizer::ops::conv::nchw::Conv2d;
use stylizer::ops::conv::nhwc::{Act, Conv3x3, Nhwc};

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // (cin, input channels per pixel, cout, h, w, what)
    let shapes = [
        (64, 64, 64, 480, 854, "SRVGG body"),
        (192, 192, 64, 120, 214, "RRDB conv5"),
        (64, 192, 32, 120, 214, "RRDB conv1 (prefix of 192)"),
        (160, 192, 32, 120, 214, "RRDB conv4 (prefix of 192)"),
        (320, 320, 320, 60, 106, "SD UNet level 1"),
    ];
    println!("{:<28} {:>10} {:>10}", "shape", "ours", "candle");
    for (cin, stride, cout, h, w, what) in shapes {
        let flops = 2.0 * (9 * cin * cout * h * w) as f64;
        let wt = Tensor::randn(0f32, 0.1, (cout, cin, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.1, cout, &dev)?;
        let conv = Conv3x3::new(&wt, &b).unwrap();
        let mut src = Nhwc::zeros(h, w, stride).unwrap();
        let x: Vec<f32> = (0..stride * h * w)
            .map(|i| (i % 97) as f32 / 97.0)
            .collect();
        src.set_from_planar(&x, stride);
        let mut dst = Nhwc::zeros(h, w, cout).unwrap();
        let ours = best(5, || conv.run(&src, &mut dst, 0, Act::LeakyRelu(0.2), None));
        let xt = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev)?;
        let theirs = best(3, || {
            xt.conv2d(&wt, 1, 1, 1, 1).unwrap();
        });
        println!(
            "{:<28} {:>10.1} {:>10.1}   GFLOP/s  ({cin}->{cout}, {h}x{w})",
            what,
            flops / ours / 1e9,
            flops / theirs / 1e9
        );
    }
    // (cin, cout, h, w, what): NCHW, batch 1.
    let nchw = [
        (320, 320, 60, 106, "UNet level 1"),
        (640, 640, 30, 53, "UNet level 2"),
        (1280, 1280, 15, 27, "UNet level 3"),
        (512, 512, 120, 212, "VAE 512 @ 1/4"),
        (256, 256, 240, 424, "VAE 256 @ 1/2"),
        (128, 128, 480, 848, "VAE 128 @ full"),
        (256, 256, 480, 848, "VAE upsample @ full"),
    ];
    for (cin, cout, h, w, what) in nchw {
        let flops = 2.0 * (9 * cin * cout * h * w) as f64;
        let wt = Tensor::randn(0f32, 0.1, (cout, cin, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.1, cout, &dev)?;
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let inner = candle_nn::Conv2d::new(wt, Some(b), config);
        let conv = Conv2d::new(inner.clone(), config)?;
        let xt = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev)?;
        let ours = best(3, || {
            conv.forward(&xt).unwrap();
        });
        let theirs = best(1, || {
            inner.forward(&xt).unwrap();
        });
        println!(
            "NCHW {:<23} {:>10.1} {:>10.1}   GFLOP/s  ({cin}->{cout}, {h}x{w})",
            what,
            flops / ours / 1e9,
            flops / theirs / 1e9
        );
    }
    Ok(())
}
