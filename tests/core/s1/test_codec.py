"""The modded-DAC codec against the original (codec_cases.npz): codes exact, audio within tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.s1.codec.convs import Snake
from core.s1.load import load_codec

from .support import (
    S1_CHECKPOINT,
    assert_close,
    codec_cases,
)


@pytest.fixture(scope="module")
def codec():
    return load_codec(S1_CHECKPOINT / "codec.pth")


@pytest.fixture(scope="module")
def cases():
    return codec_cases()


def signal(cases) -> torch.Tensor:
    return torch.from_numpy(cases["signal"]).view(1, 1, -1)


def test_config_comes_from_codec_config_json(codec):
    c = codec.config
    assert (c.sample_rate, c.encoder_dim, c.latent_dim, c.num_codebooks) == (16000, 8, 128, 4)
    assert c.frame_length == 2 * 4 * 4 * 4 * 4
    assert c.quantizer_transformer.window_size == 8


def test_encode_gives_the_original_codes(codec, cases):
    codes = codec.encode(signal(cases))
    np.testing.assert_array_equal(codes.numpy(), cases["codes"])
    assert codes.size(-1) == int(cases["code_lengths"][0]) == -(-cases["signal"].size // codec.frame_length)


def test_encoder_latent_matches(codec, cases):
    with torch.inference_mode():
        latent = codec.encoder(codec.pad_to_frames(signal(cases)))
    assert_close(latent, cases["encoder_latent"])


def test_decode_of_the_encoded_codes_matches(codec, cases):
    assert_close(codec.decode(torch.from_numpy(cases["codes"])), cases["recon_audio"])


def test_decode_clamps_out_of_range_codes_like_the_original(codec, cases):
    codes = torch.from_numpy(cases["random_codes"])
    assert codes[0, 0, 0] >= codec.config.semantic_codebook_size and codes[0, 1, 1] >= codec.config.codebook_size
    assert_close(codec.decode(codes), cases["random_decode_audio"])
    assert torch.equal(codes, torch.from_numpy(cases["random_codes"])), "decode must not modify its input"


def test_bad_codes_and_audio_are_refused(codec, cases):
    codes = torch.from_numpy(cases["random_codes"]).clone()
    with pytest.raises(ValueError, match=r"\[B, 4, T\]"):
        codec.decode(codes[:, :3])
    codes[0, 2, 0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        codec.decode(codes)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(1, 1, 0))


def test_audio_longer_than_the_original_rope_tables_encodes_causally(codec, cases):
    """9 s exceeds the original's tables (1024 latent steps / 256 frames here, ≈190 s officially): it now
    works, and by causality its first frames equal the short signal's (the last short frame held padding)."""
    sig = cases["signal"]
    long = np.concatenate([sig, sig[::-1], sig, sig[::-1], sig, sig[::-1], sig, sig[::-1], sig[:8000]])
    assert long.size // codec.frame_length * 4 > codec.config.general_block_size
    codes = codec.encode(torch.from_numpy(long).view(1, 1, -1))
    np.testing.assert_array_equal(codes[..., :31].numpy(), cases["codes"][..., :31])


@pytest.mark.parametrize("chunks", [[1] * 73, [5, 3, 8, 20, 37], [2, 1, 30, 40]])
def test_streaming_decode_equals_the_one_shot_decode(codec, cases, chunks):
    """73 frames (> the post-module's 8-frame window, so its key/value history is cut) in uneven chunks."""
    from core.s1.codec.streaming import StreamingDecoder

    codes = torch.cat([torch.from_numpy(cases[k]) for k in ("codes", "random_codes", "codes")], dim=-1)
    whole = codec.decode(codes)
    stream, pieces, start = StreamingDecoder(codec), [], 0
    for size in chunks:
        pieces.append(stream.push(codes[..., start : start + size]))
        assert pieces[-1].size(-1) == size * codec.frame_length
        start += size
    assert_close(torch.cat(pieces, dim=-1), whole.numpy())
    assert_close(whole[..., : 32 * codec.frame_length], cases["recon_audio"])  # and the whole is still the original


@pytest.mark.parametrize("chunks", [[1] * 63, [3, 8, 29, 23], [16, 16, 16, 15]])
def test_streaming_encode_gives_the_one_shot_codes(codec, cases, chunks):
    """63 frames (past the encoder's and the quantizer's attention windows and the original's short
    clip) in uneven chunks: the original's codes, and the one-shot encode's beyond them."""
    from core.s1.codec.streaming import StreamingEncoder

    sig = cases["signal"]
    audio = codec.pad_to_frames(torch.from_numpy(np.concatenate([sig, sig[::-1]])).view(1, 1, -1))
    assert audio.size(-1) == 63 * codec.frame_length
    whole = codec.encode(audio)
    stream, pieces, start = StreamingEncoder(codec), [], 0
    for size in chunks:
        pieces.append(stream.push(audio[..., start * codec.frame_length : (start + size) * codec.frame_length]))
        assert pieces[-1].shape == (1, 1 + codec.config.n_codebooks, size)
        start += size
    np.testing.assert_array_equal(torch.cat(pieces, dim=-1).numpy(), whole.numpy())
    np.testing.assert_array_equal(whole[..., :31].numpy(), cases["codes"][..., :31])
    with pytest.raises(ValueError, match="whole frames"):
        stream.push(audio[..., :100])


def test_snake_computed_in_place_gives_the_originals_formula_to_the_bit():
    snake = Snake(6)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.3, 1.0, 2.5, 7.0, 1e-3, 40.0]).view(1, 6, 1))
    x = torch.randn(2, 6, 301, generator=torch.Generator().manual_seed(0)) * 4
    time_major = x.transpose(1, 2).contiguous().transpose(1, 2)  # as the convs' outputs are laid out
    with torch.inference_mode():
        expected = x + (snake.alpha + 1e-9).reciprocal() * torch.sin(snake.alpha * x).pow(2)
        assert torch.equal(snake(x), expected)
        assert torch.equal(snake(time_major), expected)
        for dtype in (torch.float32, torch.bfloat16):  # into a stream's conv buffer, after its history
            buffer = torch.zeros(2, 305, 6, dtype=dtype).transpose(1, 2)
            snake(time_major, out=buffer[..., 4:])
            assert torch.equal(buffer[..., 4:], expected.to(dtype)) and not buffer[..., :4].any()


@pytest.mark.parametrize("window", [8, None])
def test_a_long_input_is_attended_block_by_block_with_the_same_result(monkeypatch, window):
    """The codec's transformers attend QUERY_BLOCK queries at a time over the keys their window reaches
    (a 10-minute clip's one [T, T] call took 21 GB): the same outputs (float64: the blocks' sums over
    fewer keys round alike far below the check), and no call sees more than a block and its window."""
    from core.s1.codec import transformer
    from core.s1.config import CodecTransformerConfig

    torch.manual_seed(0)
    config = CodecTransformerConfig(n_layer=2, dim=32, n_head=2, head_dim=16, window_size=window)
    model = transformer.WindowLimitedTransformer(config).double().eval()
    x = torch.randn(1, 32, 150, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)  # 150 rows: one block
        monkeypatch.setattr(transformer, "QUERY_BLOCK", 16)
        keys_seen, attend = [], model.layers[0].attention.attend
        monkeypatch.setattr(
            model.layers[0].attention,
            "attend",
            lambda q, k, v, mask: keys_seen.append(k.size(2)) or attend(q, k, v, mask),
        )
        blocked = model(x)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12)
    assert len(keys_seen) == 10 and max(keys_seen) == (16 + window - 1 if window else 150)
