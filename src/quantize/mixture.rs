//! Which block format each tensor gets: the user's target (`int8`, `q4_k_m`, ...) and the
//! per-tensor rules of llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the file
//! types Hearth writes. Knows tensor names and shapes, never tensor data.

use crate::quant::QuantType;
use crate::{Error, Result};

/// A quantization target: a file type in llama.cpp's sense (`general.file_type`), one default
/// block format plus the rules that choose others for some tensors.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// Every target with its user-facing name and `llama_ftype` id (llama.h).
const TARGETS: [(Target, &str, u32); 13] = [
    (Target::F32, "f32", 0),
    (Target::F16, "f16", 1),
    (Target::BF16, "bf16", 32),
    (Target::Q8_0, "q8_0", 7),
    (Target::Q4_0, "q4_0", 2),
    (Target::Q4_1, "q4_1", 3),
    (Target::Q5_0, "q5_0", 8),
    (Target::Q5_1, "q5_1", 9),
    (Target::Q4_K_S, "q4_k_s", 14),
    (Target::Q4_K_M, "q4_k_m", 15),
    (Target::Q5_K_S, "q5_k_s", 16),
    (Target::Q5_K_M, "q5_k_m", 17),
    (Target::Q6_K, "q6_k", 18),
];

/// Friendly names: "int8" and "int4" are what a user asks for when they want a model to fit.
const ALIASES: [(&str, Target); 2] = [("int8", Target::Q8_0), ("int4", Target::Q4_K_M)];

impl Target {
    /// Parses a type name (case-insensitive), with the `int8`/`int4` aliases.
    pub fn parse(s: &str) -> Result<Target> {
        let lower = s.to_ascii_lowercase();
        ALIASES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, t)| *t)
            .or_else(|| {
                TARGETS
                    .iter()
                    .find(|(_, n, _)| *n == lower)
                    .map(|(t, _, _)| *t)
            })
            .ok_or_else(|| {
                Error::Quantize(format!(
                    "unknown quantization type {s:?}; choose one of {}",
                    Target::names().join(", ")
                ))
            })
    }

    /// Every accepted name, aliases first.
    pub fn names() -> Vec<&'static str> {
        ALIASES
            .iter()
            .map(|(n, _)| *n)
            .chain(TARGETS.iter().map(|(_, n, _)| *n))
            .collect()
    }

    fn row(self) -> (Target, &'static str, u32) {
        *TARGETS
            .iter()
            .find(|(t, _, _)| *t == self)
            .expect("every target has a row")
    }

    /// The lower-case name, as in a store tag (`smollm2:q4_k_m`).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        self.row().2
    }

    /// The block format most tensors get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> QuantType {
        match self {
            Target::F32 => QuantType::F32,
            Target::F16 => QuantType::F16,
            Target::BF16 => QuantType::BF16,
            Target::Q8_0 => QuantType::Q8_0,
            Target::Q4_0 => QuantType::Q4_0,
            Target::Q4_1 => QuantType::Q4_1,
            Target::Q5_0 => QuantType::Q5_0,
            Target::Q5_1 => QuantType::Q5_1,
            Target::Q4_K_S | Target::Q4_K_M => QuantType::Q4_K,
            Target::Q5_K_S | Target::Q5_K_M => QuantType::Q5_K,
            Target::Q6_K => QuantType::Q6_K,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a tensor is, for the rules (llama.cpp's `tensor_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    /// attn_v, and the fused attn_qkv and attn_kv_b that llama.cpp treats alike.
    AttnV,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_v.weight")
        || name.contains("attn_qkv.weight")
        || name.contains("attn_kv_b.weight")
    {
        Category::AttnV
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// llama.cpp's `tensor_allows_quantization` for the tensors of the architectures Hearth runs:
/// matrices (two or more dimensions above 1) whose name ends in `weight` and that are not
/// norms, positional embeddings or expert routers. Everything else keeps its type.
fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    let n_dims = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("position_embd")
        && !name.contains("token_types")
}

/// The layer index in a `blk.N.` name, for ordering as llama.cpp's loader does.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// One tensor's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub qtype: QuantType,
    /// The type the rules chose when its block does not fit the row length, so `qtype` is
    /// the fallback.
    pub wanted: Option<QuantType>,
}

/// Chooses every tensor's format. `tensors` are `(name, dims, current type)` in file order;
/// `n_layer` is the model's block count. The counters for `attn_v`/`ffn_down` advance in
/// llama.cpp's loader order (non-layer tensors, then by layer number, then by name), so layer
/// `i` of `n` gets the type llama-quantize gives it.
pub fn choose(
    target: Target,
    tensors: &[(&str, &[u64], QuantType)],
    n_layer: usize,
) -> Vec<Choice> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            (
                layer_of(tensors[i].0).map_or(-1, |l| l as i64),
                tensors[i].0,
            )
        };
        key(a).cmp(&key(b))
    });
    let n_attention_wv = tensors
        .iter()
        .filter(|t| category(t.0) == Category::AttnV)
        .count();
    let tied = !tensors.iter().any(|t| category(t.0) == Category::Output);
    let n_ffn_down = if n_layer > 0 {
        n_layer
    } else {
        tensors
            .iter()
            .filter(|t| category(t.0) == Category::FfnDown)
            .count()
    };
    let (mut i_attention_wv, mut i_ffn_down) = (0usize, 0usize);
    let mut out = vec![
        Choice {
            qtype: QuantType::F32,
            wanted: None,
        };
        tensors.len()
    ];
    for i in order {
        let (name, dims, current) = tensors[i];
        if !allows_quantization(name, dims) {
            out[i].qtype = current;
            continue;
        }
        let default = target.default_type();
        if matches!(default, QuantType::F32 | QuantType::F16 | QuantType::BF16) {
            out[i] = fit(dims[0], default);
            continue;
        }
        let rule = rule_type(
            target,
            category(name),
            dims[0],
            tied,
            (&mut i_attention_wv, n_attention_wv),
            (&mut i_ffn_down, n_ffn_down),
        );
        out[i] = fit(dims[0], rule);
    }
    out
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer between, get more bits.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `llama_tensor_get_type_impl`, restricted to Hearth's targets and dense models (llama.cpp's
/// MoE, Falcon and 70B special cases do not apply to the architectures Hearth runs).
fn rule_type(
    target: Target,
    cat: Category,
    n_cols: u64,
    tied: bool,
    attn_v: (&mut usize, usize),
    ffn_down: (&mut usize, usize),
) -> QuantType {
    let default = target.default_type();
    use Target::*;
    match cat {
        Category::Output | Category::TokenEmbd if cat == Category::Output || tied => {
            if !n_cols.is_multiple_of(default.block_elems() as u64) {
                QuantType::Q8_0
            } else if default != QuantType::Q8_0 {
                QuantType::Q6_K
            } else {
                default
            }
        }
        Category::AttnV => {
            let (i, n) = (*attn_v.0, attn_v.1);
            *attn_v.0 += 1;
            match target {
                Q4_K_M | Q5_K_M if use_more_bits(i, n) => QuantType::Q6_K,
                Q4_K_S if i < 4 => QuantType::Q5_K,
                _ => default,
            }
        }
        Category::FfnDown => {
            let (i, n) = (*ffn_down.0, ffn_down.1);
            *ffn_down.0 += 1;
            match target {
                Q4_K_M | Q5_K_M if use_more_bits(i, n) => QuantType::Q6_K,
                Q4_K_S if i < n / 8 => QuantType::Q5_K,
                _ => default,
            }
        }
        _ => default,
    }
}

/// llama.cpp's `tensor_type_fallback`: a row length that is not a whole number of blocks
/// takes a 32-value format of about the same size (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0),
/// and F16 if even that does not fit. llama.cpp refuses such a tensor for the 32-value
/// targets; Hearth writes it in F16 with the same note.
fn fit(n_cols: u64, want: QuantType) -> Choice {
    if n_cols.is_multiple_of(want.block_elems() as u64) {
        return Choice {
            qtype: want,
            wanted: None,
        };
    }
    let mut got = match want {
        QuantType::Q4_K => QuantType::Q5_0,
        QuantType::Q5_K => QuantType::Q5_1,
        QuantType::Q6_K => QuantType::Q8_0,
        _ => QuantType::F16,
    };
    if !n_cols.is_multiple_of(got.block_elems() as u64) {
        got = QuantType::F16;
    }
    Choice {
        qtype: got,
        wanted: Some(want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_aliases() {
        assert_eq!(Target::parse("int8").unwrap(), Target::Q8_0);
        assert_eq!(Target::parse("INT4").unwrap(), Target::Q4_K_M);
        assert_eq!(Target::parse("Q5_K_S").unwrap(), Target::Q5_K_S);
        for n in Target::names() {
            assert!(Target::parse(n).is_ok(), "{n}");
        }
        let e = Target::parse("q3_k").unwrap_err().to_string();
        assert!(
            e.contains("unknown quantization type") && e.contains("q4_k_m"),
            "{e}"
        );
    }

    #[test]
    fn use_more_bits_matches_llama_cpp_for_30_layers() {
        // n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and 5, 8, ..., 23 (3 + 3k + 2).
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    /// A 4-layer model with 256-wide rows and an untied output: Q4_K_M's rules by layer.
    #[test]
    fn q4_k_m_follows_llama_cpp_rules() {
        let d2: &[u64] = &[256, 512];
        let d1: &[u64] = &[256];
        let mut tensors: Vec<(String, &[u64])> = vec![
            ("token_embd.weight".into(), d2),
            ("output.weight".into(), d2),
            ("output_norm.weight".into(), d1),
        ];
        // Layers listed out of order: the counters must follow layer numbers.
        for l in [1usize, 0, 3, 2] {
            for t in ["attn_q", "attn_v", "ffn_down", "attn_norm"] {
                let dims = if t == "attn_norm" { d1 } else { d2 };
                tensors.push((format!("blk.{l}.{t}.weight"), dims));
            }
        }
        let input: Vec<(&str, &[u64], QuantType)> = tensors
            .iter()
            .map(|(n, d)| (n.as_str(), *d, QuantType::F16))
            .collect();
        let got = choose(Target::Q4_K_M, &input, 4);
        let of = |name: &str| got[input.iter().position(|t| t.0 == name).unwrap()].qtype;
        assert_eq!(of("output.weight"), QuantType::Q6_K);
        assert_eq!(of("token_embd.weight"), QuantType::Q4_K, "untied");
        assert_eq!(
            of("output_norm.weight"),
            QuantType::F16,
            "1-D keeps its type"
        );
        // n = 4: n/8 = 0, 7n/8 = 3 → layers 2 ((2-0)%3 == 2) and 3 get Q6_K.
        for (l, want) in [
            (0, QuantType::Q4_K),
            (1, QuantType::Q4_K),
            (2, QuantType::Q6_K),
            (3, QuantType::Q6_K),
        ] {
            assert_eq!(of(&format!("blk.{l}.attn_v.weight")), want, "attn_v {l}");
            assert_eq!(
                of(&format!("blk.{l}.ffn_down.weight")),
                want,
                "ffn_down {l}"
            );
            assert_eq!(of(&format!("blk.{l}.attn_q.weight")), QuantType::Q4_K);
        }
    }

    #[test]
    fn rows_that_do_not_fit_fall_back_with_a_note() {
        let input: Vec<(&str, &[u64], QuantType)> = vec![
            ("token_embd.weight", &[576, 100], QuantType::F16),
            ("blk.0.attn_q.weight", &[576, 576], QuantType::F16),
            ("blk.0.ffn_down.weight", &[1536, 576], QuantType::F16),
            ("blk.0.attn_v.weight", &[576, 192], QuantType::F16),
            ("blk.0.odd.weight", &[100, 3], QuantType::F16),
        ];
        let got = choose(Target::Q4_K_M, &input, 1);
        // Tied embeddings: the output rule; 576 is not a multiple of 256 → Q8_0, no note.
        assert_eq!(got[0].qtype, QuantType::Q8_0);
        assert_eq!(got[1].qtype, QuantType::Q5_0);
        assert_eq!(got[1].wanted, Some(QuantType::Q4_K));
        assert_eq!(got[2].qtype, QuantType::Q6_K, "layer 0 of 1 uses more bits");
        assert_eq!(got[3].qtype, QuantType::Q8_0, "Q6_K falls back to Q8_0");
        assert_eq!(got[4].qtype, QuantType::F16);
        let got = choose(Target::Q8_0, &input, 1);
        assert_eq!(got[4].qtype, QuantType::F16);
        assert_eq!(got[4].wanted, Some(QuantType::Q8_0));
        assert_eq!(got[1].qtype, QuantType::Q8_0);
    }
}
