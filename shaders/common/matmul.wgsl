//! What both matmul kernels share: the parameters (binding 0), the weights in their block format
// (binding 1, read by the block-format file's `deq8`), the activations and the output.
// Assembled before matvec.wgsl or matmul.wgsl.

struct MatParams {
    n_tokens: u32,
    n_rows: u32,
    n_cols: u32,
    row_bytes: u32,
    out_stride: u32,
    out_offset: u32,
    // matvec only: rows per workgroup, about one per team.
    rows_per_group: u32,
    // First token row of x and out this dispatch covers.
    row_begin: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
