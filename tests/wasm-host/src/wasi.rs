//! The WASI preview1 functions Envoy provides to proxy-wasm plugins, with
//! Envoy's behaviour: stdout/stderr go to the log, no files, a realtime and
//! a monotonic clock (both the host's controllable clock), random bytes.

use super::guest::{read, write, write_u32, write_u64};
use super::state::{HostState, LogLevel};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

const MODULE: &str = "wasi_snapshot_preview1";
const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;
/// Envoy's cap on one `random_get`.
const RANDOM_GET_MAX: u32 = 64 * 1024;

fn count(c: &mut C<'_>, name: &'static str) {
    c.data_mut().count(name);
}

pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten_ptr: i32| -> R {
            count(&mut c, "fd_write");
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Ok(EBADF),
            };
            let mut text = Vec::new();
            for i in 0..iovs_len.max(0) {
                let Some(iov) = read(&mut c, iovs.wrapping_add(i * 8), 8) else {
                    return Ok(EFAULT);
                };
                let word = |at: usize| {
                    iov.get(at..at + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(i32::from_le_bytes)
                        .unwrap_or(0)
                };
                let (buf, len) = (word(0), word(4));
                if len != 0 {
                    let Some(bytes) = read(&mut c, buf, len) else {
                        return Ok(EFAULT);
                    };
                    text.extend_from_slice(&bytes);
                }
            }
            let written = text.len() as u32;
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            if written != 0 {
                let message = String::from_utf8_lossy(&text).into_owned();
                c.data_mut().log(level, message);
            }
            if !write_u32(&mut c, nwritten_ptr, written) {
                return Ok(EFAULT);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |mut c: C<'_>, _: i32, _: i32, _: i32, _: i32| -> R {
            count(&mut c, "fd_read");
            Ok(ENOSYS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |mut c: C<'_>, _: i32, _: i64, _: i32, _: i32| -> R {
            count(&mut c, "fd_seek");
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(MODULE, "fd_close", |mut c: C<'_>, _: i32| -> R {
        count(&mut c, "fd_close");
        Ok(SUCCESS)
    })?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: i32, stat_ptr: i32| -> R {
            count(&mut c, "fd_fdstat_get");
            if fd != 1 && fd != 2 {
                return Ok(EBADF);
            }
            // Filetype 0, no flags, rights_base = FD_WRITE (64), no inherited rights.
            let mut stat = [0u8; 24];
            stat[8] = 64;
            write(&mut c, stat_ptr, &stat);
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |mut c: C<'_>, _: i32, _: i32| -> R {
            count(&mut c, "fd_prestat_get");
            Ok(EBADF)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |mut c: C<'_>, _: i32, _: i32, _: i32| -> R {
            count(&mut c, "fd_prestat_dir_name");
            Ok(ENOSYS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "path_open",
        |mut c: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i64,
         _: i64,
         _: i32,
         _: i32|
         -> R {
            count(&mut c, "path_open");
            Ok(ENOENT)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> R {
            count(&mut c, "environ_sizes_get");
            let env = &c.data().env;
            let n = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if !write_u32(&mut c, count_ptr, n) || !write_u32(&mut c, size_ptr, size as u32) {
                return Ok(EFAULT);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut c: C<'_>, mut array_ptr: i32, mut buf_ptr: i32| -> R {
            count(&mut c, "environ_get");
            let env = c.data().env.clone();
            for (k, v) in env {
                let entry = format!("{k}={v}\0");
                if !write_u32(&mut c, array_ptr, buf_ptr as u32)
                    || !write(&mut c, buf_ptr, entry.as_bytes())
                {
                    return Ok(EFAULT);
                }
                buf_ptr = buf_ptr.wrapping_add(entry.len() as i32);
                array_ptr = array_ptr.wrapping_add(4);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut c: C<'_>, argc_ptr: i32, size_ptr: i32| -> R {
            count(&mut c, "args_sizes_get");
            if !write_u32(&mut c, argc_ptr, 0) || !write_u32(&mut c, size_ptr, 0) {
                return Ok(EFAULT);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(MODULE, "args_get", |mut c: C<'_>, _: i32, _: i32| -> R {
        count(&mut c, "args_get");
        Ok(SUCCESS)
    })?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: C<'_>, clock: i32, _precision: i64, time_ptr: i32| -> R {
            count(&mut c, "clock_time_get");
            let now = c.data().now();
            let value = match clock {
                0 => now.wall_nanos(),
                1 => now.monotonic.as_nanos() as u64,
                _ => return Ok(ENOTSUP),
            };
            if !write_u64(&mut c, time_ptr, value) {
                return Ok(EFAULT);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: C<'_>, buf_ptr: i32, len: i32| -> R {
            count(&mut c, "random_get");
            let len = len as u32;
            if len > RANDOM_GET_MAX {
                return Ok(EINVAL);
            }
            let mut bytes = Vec::with_capacity(len as usize + 8);
            while bytes.len() < len as usize {
                let word = c.data_mut().next_random();
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            bytes.truncate(len as usize);
            if !write(&mut c, buf_ptr, &bytes) {
                return Ok(EFAULT);
            }
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: C<'_>, code: i32| -> wasmtime::Result<()> {
            // Envoy logs an error and the guest then traps; fail at once.
            Err(wasmtime::Error::msg(format!(
                "the plugin called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}
