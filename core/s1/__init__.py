"""OpenAudio S1-mini: Dual-AR text-to-semantic model + 44.1 kHz modded-DAC codec (reference: fish-speech d3df505).

Public API (what an engine calls):
    S1Model.from_folder(folder, device=None, precision=None)  # loads config.json, model.pth, codec.pth, tokenizer
    model.encode_reference(audio_or_path, sample_rate=None) -> codes [N, T]
    model.chunked_encoder(audio_or_path, sample_rate=None): the same codes a chunk at a time (step(), done, codes)
    model.generate(text, [Reference(codes, transcript)], SamplingSettings(...), max_new_frames, seed)
        -> GenerationResult(frames, codes, stopped)
    model.decode(codes) -> float32 audio;  model.synthesize(...) -> Synthesis(audio, sample_rate, codes, stopped)
    StreamingDecoder(codec) / model.streaming_decoder(): push code frames, get audio chunks equal to the one-shot
        decode (within float rounding).
    Cross-request batching (batch.py): lm.setup_caches(slots, length); prefill(lm, S1Sequence(...), slot);
        decode_step(lm, [active sequences]) -> one new frame each (own settings, generator, penalty history).
    generate(..., on_frame=callback) sees every frame as it is made (streaming, progress).
Lower layers: load_dual_ar / load_codec, build_prompt, generate / decode_frame, sample_token.

QUIRKS of the original (SPEC §9) and what this package does:
  kept (the released checkpoints were trained or tuned with them, fixing would change their output):
    - RoPE cos/sin rounded to bfloat16 even in float32 runs; interleaved pairs (codec and LM).
    - special token ids come from special_tokens.json key order (ids in the file ignored).
    - tokenizer regex alternative `\\s+(\\?!\\S)` matches a literal "?!" (escaping slip).
    - slow-token repetition penalty uses column 0 of the 16-frame window; early windows hold zeros;
      the prefill frame is never in the history; codes 1..N-1 are sampled from the first 1024 fast logits.
    - codebook-embedding scaling by 1/sqrt(N+1) at semantic positions (generation path).
    - decode clamps codes above each codebook's size (the parity set relies on it).
  fixed (no effect on a well-behaved run; documented deviations):
    - `<|im_end|>` from the prefill step stops generation (the original continued past its own end).
    - the returned codes drop the last frame only if it is `<|im_end|>` (the original always dropped it,
      losing a real frame when the budget ran out); golden codes = ours[:, :-1] in that case.
    - a slow token above the semantic block gives code_0 = 0 like any non-semantic token (the original
      crashed with an index error).
    - missing / unexpected / wrong-shape checkpoint keys fail with their names (the original loaded with
      strict=False and left missing weights random); the `model.` prefix is stripped as a prefix, not
      replaced everywhere in a key.
    - codec transformers extend their RoPE tables on demand: audio longer than ~190 s encodes/decodes
      (the original failed with an index error); negative codes are a clear error, not an index crash.
    - prompts only need to fit max_seq_len (the original also demanded max_seq_len - 2048 positions of room).
  not applicable here (serving, handled by the engine/server): unused chunk_length / iterative_prompt /
  normalize parameters, the stream without WAV header, int16 wrap at +1.0, `format: pcm` failing.
"""

from .batch import S1Sequence, decode_step, prefill
from .codec import Codec, StreamingDecoder
from .config import CodecConfig, DualARConfig, S1ConfigError, load_codec_config, load_dual_ar_config
from .generate import GenerationResult, decode_frame, generate
from .load import load_codec, load_dual_ar
from .pipeline import S1Model, Synthesis
from .prompt import Reference, build_prompt
from .sampling import SamplingSettings, sample_token
from .tokenizer import S1Tokenizer, load_s1_tokenizer

__all__ = [
    "Codec",
    "CodecConfig",
    "DualARConfig",
    "GenerationResult",
    "Reference",
    "S1ConfigError",
    "S1Model",
    "S1Sequence",
    "S1Tokenizer",
    "SamplingSettings",
    "StreamingDecoder",
    "Synthesis",
    "build_prompt",
    "decode_frame",
    "decode_step",
    "generate",
    "load_codec",
    "load_codec_config",
    "load_dual_ar",
    "load_dual_ar_config",
    "load_s1_tokenizer",
    "prefill",
    "sample_token",
]
