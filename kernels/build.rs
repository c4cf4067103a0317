//! Compiles `cuda/*.cu` with nvcc when the `cuda` feature is on: cubins for sm_80 and sm_90a
//! plus PTX for compute_80 and compute_90, embedded into the crate from OUT_DIR. ptxas runs
//! with `-v` and the build fails if any kernel spills or has a stack frame.
//!
//! Without the feature nothing is compiled. With the feature but no nvcc (env `NVCC`, PATH,
//! or the repository's `.venv-cuda` from scripts/install-cuda-toolchain.sh) the build warns
//! and the launchers report "kernels were not compiled" at run time.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One `.cu` per op family (kernels/cuda/NAME.cu).
const MODULES: &[&str] = &[
    "embedding",
    "rmsnorm",
    "rope_kv",
    "silu_mul",
    "attention_prefill",
    "attention_decode",
    "sampling",
    "sampling_stats",
    "gemv",
    "gemv_mma",
];

/// (file suffix, nvcc target flags, is cubin)
const TARGETS: &[(&str, &[&str], bool)] = &[
    ("sm80.cubin", &["-cubin", "-gencode=arch=compute_80,code=sm_80"], true),
    // The -gencode form: nvcc 13.0's `-arch=sm_90a` also runs a plain sm_90 pass.
    ("sm90a.cubin", &["-cubin", "-gencode=arch=compute_90a,code=sm_90a"], true),
    ("compute80.ptx", &["-ptx", "-arch=compute_80"], false),
    ("compute90.ptx", &["-ptx", "-arch=compute_90"], false),
];

/// (module, target suffix, nvcc's stderr or the failure text)
type JobResult = (String, String, Result<String, String>);

fn main() {
    // A failed build script must stop the build with a readable message (exit ≠ 0).
    if let Err(e) = run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("tokenfleet-kernels build: {what}: {e}")
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let cuda_dir = manifest.join("cuda");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    for entry in fs::read_dir(&cuda_dir).map_err(io("read kernels/cuda"))? {
        println!("cargo:rerun-if-changed={}", entry.map_err(io("read kernels/cuda"))?.path().display());
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=PATH");
    let venv = manifest.join("..").join(".venv-cuda");
    if venv.exists() {
        println!("cargo:rerun-if-changed={}", venv.display());
    }

    let gen_path = out_dir.join("kernel_images.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return fs::write(&gen_path, not_compiled("the `cuda` feature is off")).map_err(io("write kernel_images.rs"));
    }
    let Some(nvcc) = find_nvcc(&venv) else {
        println!(
            "cargo:warning=tokenfleet-kernels: feature `cuda` is on but nvcc was not found (set NVCC, put nvcc on PATH, or run \
             scripts/install-cuda-toolchain.sh); launchers will return KernelError::NotCompiled"
        );
        return fs::write(&gen_path, not_compiled("nvcc was not found at build time")).map_err(io("write kernel_images.rs"));
    };

    let img_dir = out_dir.join("kernels");
    fs::create_dir_all(&img_dir).map_err(io("create OUT_DIR/kernels"))?;
    let include_cccl = nvcc.parent().and_then(Path::parent).map(|p| p.join("include").join("cccl"));

    // Every (module, target) job; run two at a time (nvcc is single-threaded per job and
    // build machines may be small).
    let jobs: Vec<(&str, usize)> = MODULES.iter().flat_map(|m| (0..TARGETS.len()).map(move |t| (*m, t))).collect();
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<JobResult>> = Mutex::new(Vec::new());
    let threads = env::var("NUM_JOBS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(2).clamp(1, 8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let idx = {
                        let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(&(module, t)) = jobs.get(idx) else { break };
                    let (suffix, flags, _) = TARGETS[t];
                    let src = cuda_dir.join(format!("{module}.cu"));
                    let dst = img_dir.join(format!("{module}.{suffix}"));
                    let mut cmd = Command::new(&nvcc);
                    cmd.args(["-O3", "-std=c++17", "-Xptxas", "-v", "-Werror", "all-warnings"]).args(flags);
                    if let Some(inc) = &include_cccl {
                        cmd.arg(format!("-I{}", inc.display()));
                    }
                    cmd.arg("-o").arg(&dst).arg(&src);
                    let res = match cmd.output() {
                        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stderr).into_owned()),
                        Ok(o) => Err(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
                        Err(e) => Err(format!("could not run {}: {e}", nvcc.display())),
                    };
                    results.lock().unwrap_or_else(|p| p.into_inner()).push((module.to_string(), suffix.to_string(), res));
                }
            });
        }
    });

    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (module, suffix, res) in &results {
        match res {
            Err(e) => failures.push(format!("nvcc failed for {module}.cu ({suffix}):\n{e}")),
            Ok(log) if suffix.ends_with("cubin") => {
                for f in parse_ptxas(log) {
                    let _ = writeln!(
                        report,
                        "{module:<18} {suffix:<12} {:<32} regs {:>3}  stack {:>4}  spill st {:>4} ld {:>4}  smem {:>6}",
                        f.name, f.regs, f.stack, f.spill_st, f.spill_ld, f.smem
                    );
                    if f.stack > 0 || f.spill_st > 0 || f.spill_ld > 0 {
                        failures.push(format!(
                            "{module}.cu ({suffix}): kernel {} has a {}-byte stack frame / {} + {} spill bytes",
                            f.name, f.stack, f.spill_st, f.spill_ld
                        ));
                    }
                }
            }
            Ok(_) => {}
        }
    }
    fs::write(out_dir.join("ptxas-report.txt"), &report).map_err(io("write ptxas report"))?;
    if !failures.is_empty() {
        return Err(format!("CUDA kernel build failed:\n{}", failures.join("\n")));
    }

    let mut code = String::from("// @generated by kernels/build.rs\n");
    let _ = writeln!(code, "pub(crate) const COMPILED: Result<(), &str> = Ok(());");
    let _ = writeln!(code, "pub(crate) const PTXAS_REPORT: &str = {report:?};");
    code.push_str("pub(crate) static MODULE_IMAGES: &[crate::module::ModuleImages] = &[\n");
    for m in MODULES {
        let p = |suffix: &str| format!("{:?}", img_dir.join(format!("{m}.{suffix}")).display().to_string());
        let _ = writeln!(
            code,
            "    crate::module::ModuleImages {{ name: {m:?}, sm80: include_bytes!({}), sm90a: include_bytes!({}), ptx80: include_str!({}), ptx90: include_str!({}) }},",
            p("sm80.cubin"),
            p("sm90a.cubin"),
            p("compute80.ptx"),
            p("compute90.ptx")
        );
    }
    code.push_str("];\n");
    fs::write(&gen_path, code).map_err(io("write kernel_images.rs"))
}

fn not_compiled(why: &str) -> String {
    format!(
        "// @generated by kernels/build.rs\npub(crate) const COMPILED: Result<(), &str> = Err({why:?});\n\
         pub(crate) const PTXAS_REPORT: &str = \"\";\n\
         pub(crate) static MODULE_IMAGES: &[crate::module::ModuleImages] = &[];\n"
    )
}

fn find_nvcc(venv: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let cand = dir.join("nvcc");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

struct FnInfo {
    name: String,
    regs: u32,
    stack: u32,
    spill_st: u32,
    spill_ld: u32,
    smem: u32,
}

/// Reads ptxas `-v` output: "Function properties for NAME" is followed by the stack/spill
/// line; "Compiling entry function 'NAME'" is followed by the "Used N registers" line.
fn parse_ptxas(log: &str) -> Vec<FnInfo> {
    let mut out: Vec<FnInfo> = Vec::new();
    let mut current: Option<usize> = None;
    let num_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find(|part| part.contains(unit))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse::<u32>().ok()))
            .unwrap_or(0)
    };
    let index_of = |name: &str, out: &mut Vec<FnInfo>| -> usize {
        if let Some(i) = out.iter().position(|f| f.name == name) {
            return i;
        }
        out.push(FnInfo { name: name.to_string(), regs: 0, stack: 0, spill_st: 0, spill_ld: 0, smem: 0 });
        out.len() - 1
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(index_of(rest.trim(), &mut out));
        } else if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or(rest);
            current = Some(index_of(name, &mut out));
        } else if let (true, Some(i)) = (line.contains("bytes stack frame"), current) {
            out[i].stack = num_before(line, "stack frame");
            out[i].spill_st = num_before(line, "spill stores");
            out[i].spill_ld = num_before(line, "spill loads");
        } else if let (true, Some(i)) = (line.contains("registers"), current) {
            out[i].regs = num_before(line, "registers");
            out[i].smem = num_before(line, "bytes smem");
        }
    }
    out
}
