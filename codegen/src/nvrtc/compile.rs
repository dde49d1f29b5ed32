//! NVRTC compilation of the kernel sources to CUBINs (machine code for the
//! GPU's architecture, so loading them costs no driver JIT), one unit per
//! kernel file compiled in parallel, with an on-disk cache keyed by each
//! unit's source, the target architecture and the NVRTC/driver versions,
//! so a warm start loads CUBINs instead of compiling.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::Instant;

use cudarc::nvrtc::{result, sys, Ptx};

/// The translation units of a program, which compile independently, so in
/// parallel: each kernel file with the helpers, once for each of the
/// `instances` whose macro it defines (`OPTC_GEMV_ROWS(...)` goes with
/// gemv.cu), or once alone if it defines none of them.
pub(crate) fn sources(instances: &[String]) -> Result<Vec<String>, String> {
    let files = optc_kernels::cuda::FILES;
    let mut mine: Vec<Vec<&str>> = vec![Vec::new(); files.len()];
    for i in instances {
        let name = i.split('(').next().unwrap_or("").trim();
        let define = format!("#define {name}(");
        let at = files
            .iter()
            .position(|(_, text)| text.contains(&define))
            .ok_or_else(|| format!("no kernel file defines {name} (a lowering bug)"))?;
        mine[at].push(i);
    }
    let unit = |name: &str, text: &str, instance: &str| {
        let common = optc_kernels::cuda::COMMON;
        format!("{common}\n// ---- {name}\n{text}\n// ---- instantiation\n{instance}")
    };
    let mut units = Vec::new();
    for ((name, text), inst) in files.iter().zip(&mine) {
        if inst.is_empty() {
            units.push(unit(name, text, ""));
        }
        units.extend(inst.iter().map(|i| unit(name, text, i)));
    }
    Ok(units)
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
pub(super) fn fnv1a(parts: &[&[u8]]) -> u64 {
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

pub(super) fn include_paths() -> Vec<String> {
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

/// Compiles `units` for compute capability `arch`, each on its own
/// thread (or loads them from the cache).
pub(crate) fn compile_all(units: &[String], arch: (i32, i32)) -> Result<(Vec<Ptx>, CompileReport), String> {
    let t = Instant::now();
    let done: Vec<Result<(Ptx, bool), String>> = std::thread::scope(|scope| {
        let jobs: Vec<_> = units
            .iter()
            .map(|u| scope.spawn(move || compile_unit(u, arch)))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err("an NVRTC compile thread panicked".into()))
            })
            .collect()
    });
    let mut images = Vec::with_capacity(units.len());
    let mut cache_hit = true;
    for r in done {
        let (image, hit) = r?;
        images.push(image);
        cache_hit &= hit;
    }
    let report = CompileReport {
        cache_hit,
        millis: t.elapsed().as_secs_f64() * 1e3,
        source_bytes: units.iter().map(String::len).sum(),
    };
    Ok((images, report))
}

/// Compiles one unit (or loads it from the cache).
pub(crate) fn compile(src: &str, arch: (i32, i32)) -> Result<(Ptx, CompileReport), String> {
    let t = Instant::now();
    let (image, cache_hit) = compile_unit(src, arch)?;
    let report = CompileReport {
        cache_hit,
        millis: t.elapsed().as_secs_f64() * 1e3,
        source_bytes: src.len(),
    };
    Ok((image, report))
}

/// One unit's CUBIN and whether it came from the cache.
fn compile_unit(src: &str, arch: (i32, i32)) -> Result<(Ptx, bool), String> {
    let (drv, maj, min) = versions();
    let arch_s = format!("sm_{}{}", arch.0, arch.1);
    let key = fnv1a(&[
        src.as_bytes(),
        arch_s.as_bytes(),
        format!("{drv}/{maj}.{min}").as_bytes(),
    ]);
    let path = cache_dir().map(|d| d.join("nvrtc").join(format!("{key:016x}.cubin")));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok((Ptx::from_binary(bytes), true));
        }
    }
    let includes = include_paths();
    if includes.is_empty() {
        return Err(
            "cuda_bf16.h not found: set CUDA_HOME to the CUDA toolkit (NVRTC needs its include dir)".into(),
        );
    }
    let mut options = vec![format!("--gpu-architecture={arch_s}"), "--std=c++17".into()];
    options.extend(includes.iter().map(|d| format!("--include-path={d}")));
    let t = Instant::now();
    let cubin = nvrtc_cubin(src, &options)?;
    // Which unit bounds a cold compile (`optc compile -vv`).
    // Every unit is the helpers, then `// ---- FILE`, the file, and its
    // instantiations after `// ---- instantiation(s)`.
    let body = src.strip_prefix(optc_kernels::cuda::COMMON).unwrap_or(src);
    let file = body
        .lines()
        .find_map(|l| l.strip_prefix("// ---- "))
        .unwrap_or("?");
    let instance = body
        .lines()
        .skip_while(|l| !l.starts_with("// ---- instantiation"))
        .nth(1)
        .unwrap_or("");
    tracing::debug!(
        file,
        instance,
        ms = t.elapsed().as_secs_f64() * 1e3,
        "NVRTC compiled a unit"
    );
    if let Some(p) = &path {
        // Written whole under another name, then renamed: a reader never
        // sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let write = p
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, &cubin))
            .and_then(|_| std::fs::rename(&tmp, p));
        if let Err(e) = write {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the NVRTC cache");
        }
    }
    Ok((Ptx::from_binary(cubin), false))
}

/// NVRTC's CUBIN for `src`, or its log as the error.
pub(super) fn nvrtc_cubin(src: &str, options: &[String]) -> Result<Vec<u8>, String> {
    let csrc = CString::new(src).map_err(|_| "kernel source holds a NUL byte".to_string())?;
    let prog = result::create_program(&csrc, None).map_err(|e| format!("NVRTC: {e}"))?;
    // SAFETY: `prog` is a live program until the destroy below; the sizes
    // NVRTC reports bound the buffers it writes.
    unsafe {
        let compiled = result::compile_program(prog, options);
        let out = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .unwrap_or_default();
                Err(format!("NVRTC failed: {e}\n{log}"))
            }
            Ok(()) => {
                let mut n = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut n)
                    .result()
                    .map_err(|e| format!("NVRTC CUBIN size: {e}"))
                    .and_then(|()| {
                        let mut buf = vec![0u8; n];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                            .result()
                            .map(|()| buf)
                            .map_err(|e| format!("NVRTC CUBIN: {e}"))
                    })
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cache_key_is_stable_and_separates_parts() {
        let a = super::fnv1a(&[b"ab", b"c"]);
        assert_eq!(a, super::fnv1a(&[b"ab", b"c"]));
        assert_ne!(a, super::fnv1a(&[b"a", b"bc"]));
    }

    /// Every unit of a bf16 Llama-shaped program compiles to a CUBIN on
    /// its own (no unit needs another's definitions). Needs NVRTC and the
    /// CUDA headers (`CUDA_HOME`), not a GPU; skipped without them.
    #[test]
    fn every_unit_compiles_alone() {
        let includes = super::include_paths();
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } || includes.is_empty() {
            eprintln!("skipping: no NVRTC or no CUDA headers (set CUDA_HOME)");
            return;
        }
        let mut instances = vec![optc_kernels::cuda::attention_instance("bf16", 64)];
        instances.extend(optc_kernels::cuda::gemv_instances("bf16"));
        instances.extend(optc_kernels::cuda::pick_instances("bf16"));
        let mut units = super::sources(&instances).unwrap();
        // The megakernel at Llama-3.2-1B's shape (also with the L2
        // prefetch and bulk copies) and at the fixtures'.
        use optc_kernels::cuda::{mega_source, MegaShape};
        let one_b = MegaShape::new("bf16", 2048, 8192, 32, 8, 64).unwrap();
        let variant = MegaShape {
            prefetch: 16,
            tma: true,
            ..one_b
        };
        for shape in [one_b, variant, MegaShape::new("f16", 64, 128, 4, 2, 16).unwrap()] {
            units.push(mega_source(&shape));
        }
        let mut options = vec!["--gpu-architecture=sm_90".to_string(), "--std=c++17".into()];
        options.extend(includes.iter().map(|d| format!("--include-path={d}")));
        let t = std::time::Instant::now();
        std::thread::scope(|scope| {
            let jobs: Vec<_> = units
                .iter()
                .map(|u| scope.spawn(|| super::nvrtc_cubin(u, &options)))
                .collect();
            for (j, u) in jobs.into_iter().zip(&units) {
                let name = u.lines().find(|l| l.starts_with("// ---- ")).unwrap_or("?");
                let cubin = j.join().unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
                // An ELF image.
                assert_eq!(&cubin[..4], b"\x7fELF", "{name}");
            }
        });
        eprintln!("{} units compiled in {:?}", units.len(), t.elapsed());
        let bad = super::nvrtc_cubin("__global__ void k() { undefined_thing(); }", &options).unwrap_err();
        assert!(bad.contains("undefined_thing"), "{bad}");
    }

    #[test]
    fn each_instance_gets_a_unit_of_its_kernel_file() {
        let attention = "OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64)\n".to_string();
        let gemvs = optc_kernels::cuda::gemv_instances("bf16");
        // The argmax, the sampling statistics and the sampling pick: three
        // units, so the pick (the slowest to compile) bounds a cold compile
        // alone.
        let picks = optc_kernels::cuda::pick_instances("bf16");
        assert_eq!(picks.len(), 3);
        let mut instances = vec![attention.clone()];
        instances.extend(gemvs.iter().cloned());
        instances.extend(picks.iter().cloned());
        let units = super::sources(&instances).unwrap();
        let files = optc_kernels::cuda::FILES;
        // Files without instances once; attention.cu once; gemv.cu and
        // sample.cu once a line.
        assert_eq!(units.len(), files.len() - 3 + 1 + gemvs.len() + picks.len());
        for (name, _) in files {
            let tag = format!("// ---- {name}\n");
            let of: Vec<&String> = units.iter().filter(|u| u.contains(&tag)).collect();
            assert!(
                of.iter().all(|u| u.starts_with(optc_kernels::cuda::COMMON)),
                "{name}"
            );
            let want: Vec<&String> = match name {
                "attention.cu" => vec![&attention],
                "gemv.cu" => gemvs.iter().collect(),
                "sample.cu" => picks.iter().collect(),
                _ => Vec::new(),
            };
            if want.is_empty() {
                assert_eq!(of.len(), 1, "{name}");
            } else {
                assert_eq!(of.len(), want.len(), "{name}");
                for (u, i) in of.iter().zip(want) {
                    assert!(u.ends_with(i.as_str()), "{name}: {i}");
                }
            }
        }
        let bad = super::sources(&["OPTC_NOTHING(bf16)\n".into()]).unwrap_err();
        assert!(bad.contains("OPTC_NOTHING"), "{bad}");
    }
}
