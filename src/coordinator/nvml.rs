//! GPU temperatures from NVIDIA's NVML, when `libnvidia-ml.so.1` is on the machine. Loaded at run
//! time with dlopen: never needed to build or run, and a machine without it reads no GPU.

use nix::libc::{RTLD_LOCAL, RTLD_NOW, c_char, c_int, c_uint, c_void, dlopen, dlsym};
use std::ffi::CString;

type Handle = *mut c_void;
const NVML_SUCCESS: c_int = 0;
const NVML_TEMPERATURE_GPU: c_int = 0;

pub struct Nvml {
    count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    handle_by_index: unsafe extern "C" fn(c_uint, *mut Handle) -> c_int,
    temperature: unsafe extern "C" fn(Handle, c_int, *mut c_uint) -> c_int,
}

// SAFETY: NVML's functions are thread-safe once initialised; we only hold function pointers.
unsafe impl Send for Nvml {}

fn symbol(lib: *mut c_void, name: &str) -> Option<*mut c_void> {
    let name = CString::new(name).ok()?;
    // SAFETY: lib is a handle from dlopen; name is NUL-terminated.
    let sym = unsafe { dlsym(lib, name.as_ptr() as *const c_char) };
    (!sym.is_null()).then_some(sym)
}

impl Nvml {
    /// Loads and initialises NVML; `None` when the library (or a GPU) is not there.
    pub fn load() -> Option<Nvml> {
        let path = CString::new("libnvidia-ml.so.1").ok()?;
        // SAFETY: a plain dlopen of a system library by name; the handle is kept for the
        // process's lifetime (never dlclosed), so the function pointers stay valid.
        let lib = unsafe { dlopen(path.as_ptr(), RTLD_NOW | RTLD_LOCAL) };
        if lib.is_null() {
            return None;
        }
        // SAFETY: the symbols have these C signatures in NVML's API (nvml.h, v2 entry points).
        unsafe {
            let init: unsafe extern "C" fn() -> c_int =
                std::mem::transmute(symbol(lib, "nvmlInit_v2")?);
            if init() != NVML_SUCCESS {
                return None;
            }
            Some(Nvml {
                count: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_uint) -> c_int>(
                    symbol(lib, "nvmlDeviceGetCount_v2")?,
                ),
                handle_by_index: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(c_uint, *mut Handle) -> c_int,
                >(symbol(lib, "nvmlDeviceGetHandleByIndex_v2")?),
                temperature: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Handle, c_int, *mut c_uint) -> c_int,
                >(symbol(lib, "nvmlDeviceGetTemperature")?),
            })
        }
    }

    /// The temperature of each GPU, in °C, labelled `nvml:gpuN`.
    pub fn temperatures(&self) -> Vec<(String, f64)> {
        let mut n: c_uint = 0;
        // SAFETY: out-pointers to locals, as NVML's API takes them.
        if unsafe { (self.count)(&mut n) } != NVML_SUCCESS {
            return Vec::new();
        }
        (0..n)
            .filter_map(|i| {
                let mut dev: Handle = std::ptr::null_mut();
                let mut t: c_uint = 0;
                // SAFETY: as above; dev comes from NVML for index i.
                let ok = unsafe {
                    (self.handle_by_index)(i, &mut dev) == NVML_SUCCESS
                        && (self.temperature)(dev, NVML_TEMPERATURE_GPU, &mut t) == NVML_SUCCESS
                };
                ok.then(|| (format!("nvml:gpu{i}"), f64::from(t)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_machine_without_nvidia_reads_no_gpu() {
        // This machine has no NVIDIA library: loading must say so, not fail.
        if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists() {
            return;
        }
        assert!(super::Nvml::load().is_none());
    }
}
