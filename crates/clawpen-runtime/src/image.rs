//! The sandbox image: `FROM scratch` plus the static `clawpen` executable, built locally with no
//! registry. Its tag carries the executable's digest, so a rebuilt server knows its image is stale.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use bollard::image::BuildImageOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::{DockerRuntime, Result, RuntimeError};

/// Repository name of the sandbox image; the tag is the executable's digest.
pub const IMAGE_REPO: &str = "clawpen-sandbox";
/// Label holding the full SHA-256 of the packed executable.
pub const BINARY_LABEL: &str = "clawpen.binary-sha256";

const DOCKERFILE: &str = r#"FROM scratch
COPY clawpen /clawpen
USER 65534:65534
ENTRYPOINT ["/clawpen"]
CMD ["agent"]
"#;

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The image tag for an executable with this digest.
pub fn tag_for_digest(sha256: &str) -> String {
    format!("{IMAGE_REPO}:{}", &sha256[..16])
}

/// Checks that an ELF file has no program interpreter, i.e. needs no dynamic loader, so it runs
/// alone in a `FROM scratch` image.
pub fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::Image(format!("cannot read {}: {e}", path.display())))?;
    let not_static = || {
        RuntimeError::Image(format!(
            "{} is dynamically linked, and the sandbox image has no libraries; build it static \
             (the repository's .cargo/config.toml does this: use `cargo build` from the repository root)",
            path.display()
        ))
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(RuntimeError::Image(format!("{} is not a 64-bit ELF executable", path.display())));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > bytes.len() {
            break;
        }
        // PT_INTERP = 3: the executable asks for a dynamic loader.
        if u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) == 3 {
            return Err(not_static());
        }
    }
    Ok(())
}

/// Whether an image with this tag exists on the engine.
pub async fn image_present(rt: &DockerRuntime, tag: &str) -> Result<bool> {
    match rt.client().inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(e) => match RuntimeError::from(e) {
            RuntimeError::NotFound => Ok(false),
            other => Err(other),
        },
    }
}

/// One step of an image build, for a progress display.
#[derive(Debug, Clone)]
pub enum BuildProgress {
    /// The build context is being packed: `done` of `total` bytes.
    Packing { done: u64, total: u64 },
    /// A line from the engine's build output.
    Engine(String),
}

/// Builds the sandbox image from `exe` and returns its tag. `progress` is called as it goes.
pub async fn build(rt: &DockerRuntime, exe: &Path, mut progress: impl FnMut(BuildProgress)) -> Result<String> {
    check_static(exe)?;
    let digest = file_sha256(exe).map_err(|e| RuntimeError::Image(format!("cannot read {}: {e}", exe.display())))?;
    let tag = tag_for_digest(&digest);
    let context = pack_context(exe, &mut progress)?;
    let opts = BuildImageOptions::<String> {
        dockerfile: "Dockerfile".into(),
        t: tag.clone(),
        rm: true,
        forcerm: true,
        labels: HashMap::from([(BINARY_LABEL.to_owned(), digest)]),
        ..Default::default()
    };
    let mut stream = rt.client().build_image(opts, None, Some(context));
    while let Some(item) = stream.next().await {
        let info = item?;
        if let Some(err) = info.error {
            return Err(RuntimeError::Image(format!("image build failed: {err}")));
        }
        if let Some(line) = info.stream {
            let line = line.trim();
            if !line.is_empty() {
                progress(BuildProgress::Engine(line.to_owned()));
            }
        }
    }
    if !image_present(rt, &tag).await? {
        return Err(RuntimeError::Image(format!("the engine finished the build but {tag} is missing")));
    }
    Ok(tag)
}

fn pack_context(exe: &Path, progress: &mut impl FnMut(BuildProgress)) -> Result<Bytes> {
    let io = |e: std::io::Error| RuntimeError::Image(format!("packing the build context: {e}"));
    let data = std::fs::read(exe).map_err(io)?;
    let total = data.len() as u64;
    let mut ar = tar::Builder::new(Vec::with_capacity(data.len() + 4096));
    let mut header = tar::Header::new_gnu();
    header.set_size(DOCKERFILE.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    ar.append_data(&mut header, "Dockerfile", DOCKERFILE.as_bytes()).map_err(io)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(total);
    header.set_mode(0o555);
    header.set_cksum();
    ar.append_data(&mut header, "clawpen", data.as_slice()).map_err(io)?;
    progress(BuildProgress::Packing { done: total, total });
    Ok(Bytes::from(ar.into_inner().map_err(io)?))
}
