//! The uniform structs the kernels read, one per shader family. Each is `#[repr(C)]` + `Pod`
//! and mirrors a WGSL struct of the same name member for member; `uniform_struct!` records
//! every field's offset and size so a naga test can check the two layouts agree (tests/gpu.rs).
//! Sizes are padded to 16 bytes, as uniform buffers require. `AttnUniform` and `RopeUniform`
//! are the device forms of `backend::AttnParams` and `backend::RopeParams`, named apart from
//! them.

/// A uniform struct's layout as Rust lays it out: the WGSL struct name and its fields.
pub struct UniformLayout {
    pub wgsl_name: &'static str,
    pub size: usize,
    /// `(name, offset, size)` of each field, padding included.
    pub fields: &'static [(&'static str, usize, usize)],
}

macro_rules! uniform_struct {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $(pub $field: $ty),*
        }

        impl $name {
            pub const LAYOUT: UniformLayout = UniformLayout {
                wgsl_name: stringify!($name),
                size: std::mem::size_of::<$name>(),
                fields: &[$((
                    stringify!($field),
                    std::mem::offset_of!($name, $field),
                    std::mem::size_of::<$ty>(),
                )),*],
            };
        }
    };
}

uniform_struct!(
    /// common/matmul.wgsl (matvec and matmul): `out[t, out_offset + r]` for the weight
    /// part's rows.
    MatParams {
        n_tokens: u32,
        n_rows: u32,
        n_cols: u32,
        row_bytes: u32,
        out_stride: u32,
        out_offset: u32,
        rows_per_group: u32,
        row_begin: u32,
    }
);

uniform_struct!(
    /// embed.wgsl: the ids that fall in the part's rows `[row_begin, row_end)`.
    EmbedParams {
        n_ids: u32,
        n_cols: u32,
        row_bytes: u32,
        row_begin: u32,
        row_end: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
);

uniform_struct!(
    /// rms_norm.wgsl.
    NormParams {
        n_groups: u32,
        group: u32,
        eps: f32,
        _pad0: u32,
    }
);

uniform_struct!(
    /// rope.wgsl; `neox` is 1 for the NeoX pairing, 0 for the interleaved one.
    RopeUniform {
        n_rows: u32,
        n_heads: u32,
        head_dim: u32,
        n_rot: u32,
        neox: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
);

uniform_struct!(
    /// common/attention.wgsl (both attention kernels); `window`, `sinks` and `softcap` are 0
    /// when off (`window` and `sinks` are the layer's `Mask`); `n_batch` and `block_size`
    /// locate rows and block tables in the rows buffer.
    AttnUniform {
        n_q: u32,
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        row_begin: u32,
        window: u32,
        n_splits: u32,
        kv_stride: u32,
        scale: f32,
        softcap: f32,
        n_batch: u32,
        block_size: u32,
        sinks: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
);

uniform_struct!(
    /// common/op.wgsl: every `TensorOp` kernel (`backend::ops`). `n` threads; the meaning of
    /// the other fields is the op's (`aux`: a second size, attention_bwd's window).
    OpParams {
        n: u32,
        rows: u32,
        cols: u32,
        inner: u32,
        s: f32,
        flags: u32,
        row_bytes: u32,
        aux: u32,
    }
);

uniform_struct!(
    /// argmax.wgsl.
    ArgmaxParams {
        n_rows: u32,
        n_cols: u32,
        _pad0: u32,
        _pad1: u32,
    }
);

uniform_struct!(
    /// kv_write.wgsl.
    KvWriteParams {
        n_words: u32,
        row_words: u32,
        slot_offset: u32,
        _pad0: u32,
    }
);

uniform_struct!(
    /// kv_shift.wgsl.
    KvShiftParams {
        n_moves: u32,
        row_values: u32,
        head_dim: u32,
        n_rot: u32,
        neox: u32,
        rotate: u32,
        delta: f32,
        _pad0: u32,
    }
);

/// Every uniform struct, for the layout test.
pub const ALL_LAYOUTS: [UniformLayout; 9] = [
    MatParams::LAYOUT,
    EmbedParams::LAYOUT,
    NormParams::LAYOUT,
    RopeUniform::LAYOUT,
    AttnUniform::LAYOUT,
    OpParams::LAYOUT,
    ArgmaxParams::LAYOUT,
    KvWriteParams::LAYOUT,
    KvShiftParams::LAYOUT,
];
