//! Flow-warped noise against Go-with-the-Flow's `NoiseWarper` (RyannDaGreat/CommonSource
//! `noise_warp.py`), replaying the reference's draws along the same flows
//! (`tools/reference/golden_noise_warp.py`).

use stylizer::temporal::flow::Flow;
use stylizer::temporal::noise_warp::NoiseWarper;

use crate::common;

fn planar(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn noise_warper_matches_go_with_the_flow() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/noise_warp.safetensors"
    );
    let g = common::load_tensors(path);
    let (c, h, w) = g["start"].dims3().unwrap();
    let mut warper = NoiseWarper::new(c, w, h, planar(&g["start"]));
    for k in 0..5 {
        let f = planar(&g[&format!("flow{k}")]);
        let flow = Flow {
            width: w,
            height: h,
            data: (0..w * h).map(|i| [f[i], f[w * h + i]]).collect(),
        };
        warper.step(&flow, &planar(&g[&format!("fresh{k}")]));
        let e_noise = max_abs(&warper.noise, &planar(&g[&format!("noise{k}")]));
        let e_weight = max_abs(&warper.weight, &planar(&g[&format!("weight{k}")]));
        let e_down = max_abs(&warper.downscaled(4), &planar(&g[&format!("down{k}")]));
        println!("step {k}: max abs noise {e_noise:.1e}, weight {e_weight:.1e}, ÷4 {e_down:.1e}");
        assert!(
            e_noise < 1e-5 && e_weight < 1e-5 && e_down < 1e-5,
            "step {k}: noise {e_noise}, weight {e_weight}, downscaled {e_down}"
        );
    }
}
