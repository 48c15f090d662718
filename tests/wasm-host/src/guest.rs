//! Access to the guest's linear memory from inside host functions, and
//! allocation through the guest's own allocator, as Envoy does it.

use super::state::HostState;
use wasmtime::{Caller, Memory, TypedFunc};

/// Handles taken from the instance right after instantiation.
#[derive(Clone)]
pub(crate) struct GuestHandles {
    pub memory: Memory,
    /// `proxy_on_memory_allocate` (or `malloc`).
    pub alloc: TypedFunc<i32, i32>,
}

/// proxy-wasm status codes (`WasmResult` in the C++ host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

fn handles(caller: &Caller<'_, HostState>) -> wasmtime::Result<GuestHandles> {
    caller
        .data()
        .guest
        .clone()
        .ok_or_else(|| wasmtime::Error::msg("host call before the instance was set up"))
}

/// Reads `len` bytes at `ptr`; `None` when out of bounds.
pub(crate) fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.data().guest.as_ref()?.memory;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&*caller);
    data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

/// Writes `bytes` at `ptr`; false when out of bounds.
pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().guest.as_ref().map(|g| g.memory) else {
        return false;
    };
    memory
        .write(&mut *caller, ptr as u32 as usize, bytes)
        .is_ok()
}

pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// Envoy's `copyToPointerSize`: allocates `bytes.len()` in the guest, copies
/// the bytes there and stores the pointer and size at `ptr_ptr`/`size_ptr`.
/// An empty value is returned as a null pointer with size 0. A trap in the
/// guest allocator is an error (it fails the test).
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<Status> {
    let mut pointer = 0u32;
    if !bytes.is_empty() {
        pointer = alloc(caller, bytes)?;
        if pointer == 0 {
            return Ok(Status::InvalidMemoryAccess);
        }
    }
    if !write_u32(caller, ptr_ptr, pointer) || !write_u32(caller, size_ptr, bytes.len() as u32) {
        return Ok(Status::InvalidMemoryAccess);
    }
    Ok(Status::Ok)
}

/// Allocates through the guest and copies `bytes` there; 0 when the copy does
/// not fit (the guest returned a bad pointer).
pub(crate) fn alloc(caller: &mut Caller<'_, HostState>, bytes: &[u8]) -> wasmtime::Result<u32> {
    let guest = handles(caller)?;
    let size = i32::try_from(bytes.len())
        .map_err(|_| wasmtime::Error::msg("value too large for a wasm32 guest"))?;
    let pointer = guest.alloc.call(&mut *caller, size)?;
    if !write(caller, pointer, bytes) {
        return Ok(0);
    }
    Ok(pointer as u32)
}
