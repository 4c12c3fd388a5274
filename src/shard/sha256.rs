//! The SHA-256 digest of a shard or output file (the `sha2` crate), as the 64 lowercase hex digits the
//! manifest records. Files are streamed in 1 MiB reads, so a shard is never held twice in memory.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The SHA-256 (lowercase hex) and the length of a file's bytes. The one place files are
/// hashed: shard manifests and the optimizer's `--report` both use it.
pub fn file_digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex(&h.finalize()), bytes))
}

/// The SHA-256 of a file's bytes.
pub fn file_hex(path: &Path) -> std::io::Result<String> {
    Ok(file_digest(path)?.0)
}

/// The SHA-256 of bytes in memory (lowercase hex).
pub fn bytes_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::file_hex;

    #[test]
    fn known_digests_of_files() {
        // FIPS 180-4 examples and the empty string, through the file path the manifest uses.
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&[u8], &str); 3] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, bytes).expect("write");
            assert_eq!(file_hex(&p).expect("hash"), *want);
        }
        // One million `a`s (FIPS 180-2 appendix B.3): the digest spans many compression blocks.
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'a'; 1_000_000]).expect("write");
        assert_eq!(
            file_hex(&p).expect("hash"),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // A file longer than several reads hashes as its bytes do in one piece.
        let data: Vec<u8> = (0..3_000_017u32)
            .map(|i| (i.wrapping_mul(7) >> 3) as u8)
            .collect();
        std::fs::write(&p, &data).expect("write");
        let whole = super::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data));
        assert_eq!(file_hex(&p).expect("hash"), whole);
    }
}
