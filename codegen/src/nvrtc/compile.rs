//! NVRTC compilation of the kernel sources, with an on-disk cache keyed by
//! the source, the target architecture and the NVRTC/driver versions, so a
//! warm start loads PTX instead of compiling.

use std::path::PathBuf;
use std::time::Instant;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// The one translation unit for a program: helpers, every kernel file,
/// then the instantiations the graph needs.
pub(crate) fn source(instances: &[String]) -> String {
    let mut s = String::from(optc_kernels::cuda::COMMON);
    for (name, text) in optc_kernels::cuda::FILES {
        s.push_str(&format!("\n// ---- {name}\n"));
        s.push_str(text);
    }
    s.push_str("\n// ---- instantiations\n");
    for i in instances {
        s.push_str(i);
    }
    s
}

/// The tensor-core prefill unit: helpers, the kernel, its instantiations.
pub(crate) fn mma_source(instances: &[String]) -> String {
    let mut s = String::from(optc_kernels::cuda::COMMON);
    s.push_str("\n// ---- attention_mma.cu\n");
    s.push_str(optc_kernels::cuda::PREFILL_MMA);
    s.push_str("\n// ---- instantiations\n");
    for i in instances {
        s.push_str(i);
    }
    s
}

/// FNV-1a: a stable hash (std's may change between Rust releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `$OPTC_CACHE_DIR`, else `$XDG_CACHE_HOME/optc`, else `~/.cache/optc`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("OPTC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("optc"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/optc"))
}

fn versions() -> (i32, i32, i32) {
    let (mut drv, mut maj, mut min) = (0, 0, 0);
    unsafe {
        let _ = cudarc::driver::sys::cuDriverGetVersion(&mut drv);
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut maj, &mut min);
    }
    (drv, maj, min)
}

fn include_paths() -> Vec<String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(PathBuf::from(d).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.into_iter()
        .filter(|d| d.join("cuda_bf16.h").exists())
        .map(|d| d.to_string_lossy().into_owned())
        .collect()
}

/// What a compile did, for logs and `optc bench`.
#[derive(Clone, Debug)]
pub struct CompileReport {
    pub cache_hit: bool,
    pub millis: f64,
    pub source_bytes: usize,
}

/// Compiles `src` for compute capability `arch` (or loads it from the cache).
pub(crate) fn compile(src: &str, arch: (i32, i32)) -> Result<(Ptx, CompileReport), String> {
    let t = Instant::now();
    let (drv, maj, min) = versions();
    let arch_s = format!("sm_{}{}", arch.0, arch.1);
    let key = fnv1a(&[
        src.as_bytes(),
        arch_s.as_bytes(),
        format!("{drv}/{maj}.{min}").as_bytes(),
    ]);
    let path = cache_dir().map(|d| d.join("nvrtc").join(format!("{key:016x}.ptx")));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            let report = CompileReport {
                cache_hit: true,
                millis: t.elapsed().as_secs_f64() * 1e3,
                source_bytes: src.len(),
            };
            return Ok((Ptx::from_src(text), report));
        }
    }
    let includes = include_paths();
    if includes.is_empty() {
        return Err(
            "cuda_bf16.h not found: set CUDA_HOME to the CUDA toolkit (NVRTC needs its include dir)".into(),
        );
    }
    let opts = CompileOptions {
        include_paths: includes,
        options: vec![format!("--gpu-architecture={arch_s}"), "--std=c++17".into()],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(src, opts).map_err(|e| format!("NVRTC failed: {e}"))?;
    if let Some(p) = &path {
        let text = ptx.to_src();
        let write = p
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(p, text));
        if let Err(e) = write {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the NVRTC cache");
        }
    }
    let report = CompileReport {
        cache_hit: false,
        millis: t.elapsed().as_secs_f64() * 1e3,
        source_bytes: src.len(),
    };
    Ok((ptx, report))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cache_key_is_stable_and_separates_parts() {
        let a = super::fnv1a(&[b"ab", b"c"]);
        assert_eq!(a, super::fnv1a(&[b"ab", b"c"]));
        assert_ne!(a, super::fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn the_source_holds_every_file_and_the_instances() {
        let s = super::source(&["OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64)\n".into()]);
        for (name, _) in optc_kernels::cuda::FILES {
            assert!(s.contains(name), "{name}");
        }
        assert!(s.ends_with("OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64)\n"));
    }
}
