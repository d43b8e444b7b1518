//! Model cache lookup and downloads, against a local HTTP server on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use stylizer::upscale::fetch::{download, resolve_model_in, sha256_file};

/// Serves `body` to `n` requests (honouring `Range: bytes=N-`), returns the request heads.
fn serve(body: Vec<u8>, n: usize) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/models/m.pth", listener.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let from = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(String::from)
                })
                .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok());
            let (status, part) = match from {
                Some(f) if f < body.len() => ("206 Partial Content", &body[f..]),
                Some(_) => ("416 Range Not Satisfiable", &body[..0]),
                None => ("200 OK", &body[..]),
            };
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            )
            .unwrap();
            s.write_all(part).unwrap();
            heads.push(head);
        }
        heads
    });
    (url, h)
}

fn body() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect()
}

fn sha_of(b: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b).unwrap();
    sha256_file(&p).unwrap()
}

#[test]
fn download_checks_sha256_and_reports_progress() {
    let b = body();
    let sha = sha_of(&b);
    let (url, server) = serve(b.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("cache/m.pth");
    let mut seen = Vec::new();
    download(&url, &sha, &dest, &mut |d, t| seen.push((d, t))).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b);
    assert!(!dir.path().join("cache/m.pth.part").exists());
    assert_eq!(seen.last(), Some(&(b.len() as u64, Some(b.len() as u64))));
    assert!(seen.len() > 2, "progress is reported while bytes arrive");
    let heads = server.join().unwrap();
    assert!(heads[0].starts_with("GET /models/m.pth HTTP/1.1"));
}

#[test]
fn download_resumes_a_partial_file() {
    let b = body();
    let sha = sha_of(&b);
    let (url, server) = serve(b.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.pth");
    std::fs::write(dir.path().join("m.pth.part"), &b[..100_000]).unwrap();
    let mut first = None;
    download(&url, &sha, &dest, &mut |d, t| {
        first.get_or_insert((d, t));
    })
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b);
    assert_eq!(first, Some((100_000, Some(b.len() as u64))));
    let heads = server.join().unwrap().join("").to_ascii_lowercase();
    assert!(heads.contains("range: bytes=100000-"), "{heads}");
}

#[test]
fn download_rejects_a_wrong_checksum() {
    let b = body();
    let (url, server) = serve(b, 1);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.pth");
    let err = download(&url, &"0".repeat(64), &dest, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(!dest.exists() && !dir.path().join("m.pth.part").exists());
    server.join().unwrap();
}

#[test]
fn model_names_resolve_in_the_cache_folder() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve_model_in("RealESRGAN_x4plus", dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("video-stylizer models fetch RealESRGAN_x4plus"),
        "the error says how to get the model: {err}"
    );
    let err = resolve_model_in("nonsense_model", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown model nonsense_model"), "{err}");
    let err = resolve_model_in("/no/such/file.pth", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such model file"), "{err}");
    std::fs::write(dir.path().join("my-net.safetensors"), b"x").unwrap();
    assert_eq!(
        resolve_model_in("my-net", dir.path()).unwrap(),
        dir.path().join("my-net.safetensors")
    );
}
