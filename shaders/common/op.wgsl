//! The parameters and thread index of every `TensorOp` kernel (src/backend/ops): weight at
// binding 1, inputs at 2, 3, 4 (and 6), output at 5; one thread per work item, in 256-thread
// workgroups laid out over x then y.

struct OpParams {
    n: u32,
    rows: u32,
    cols: u32,
    inner: u32,
    s: f32,
    flags: u32,
    row_bytes: u32,
    aux: u32,
}

@group(0) @binding(0) var<uniform> p: OpParams;

fn op_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}
