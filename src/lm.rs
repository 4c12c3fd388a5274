//! Language-model inputs shared by `eval`, `compare` and calibration: loading a tokenizer,
//! tokenizing a text file, and laying out the feeds of a decoder LM for a batch of windows.

use crate::CliError;
use std::path::Path;
use tokenizers::Tokenizer;

/// Loads a Hugging Face `tokenizer.json`.
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer, CliError> {
    Tokenizer::from_file(path).map_err(|source| CliError::Tokenizer {
        path: path.to_path_buf(),
        source,
    })
}

/// The ids of a whole UTF-8 text file, without special tokens.
pub(crate) fn encode_file(tok: &Tokenizer, path: &Path) -> Result<Vec<u32>, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
    let enc = tok
        .encode(text.as_str(), false)
        .map_err(|source| CliError::Tokenize {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(enc.get_ids().to_vec())
}

/// One feed of a decoder LM: its input name, shape `[batch, seq]` and int64 data.
pub(crate) struct Feed {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

/// The feeds of a decoder LM with inputs `names` for a batch of equally long windows:
/// `input_ids` (or the only input), and `attention_mask` (all ones) / `position_ids` (0..seq per
/// window) when the model has them. `command` names the caller in the error for any other input.
pub(crate) fn feeds(
    names: &[String],
    batch: &[Vec<i64>],
    command: &'static str,
) -> Result<Vec<Feed>, CliError> {
    let (b, s) = (batch.len(), batch.first().map_or(0, |w| w.len()));
    names
        .iter()
        .map(|n| {
            let data = match n.as_str() {
                "attention_mask" => vec![1i64; b * s],
                "position_ids" => (0..b * s).map(|i| (i % s) as i64).collect(),
                x if x == "input_ids" || names.len() == 1 => {
                    batch.iter().flatten().copied().collect()
                }
                other => {
                    return Err(CliError::UnfillableInput {
                        input: other.to_string(),
                        command,
                    })
                }
            };
            Ok(Feed {
                name: n.clone(),
                shape: vec![b, s],
                data,
            })
        })
        .collect()
}
