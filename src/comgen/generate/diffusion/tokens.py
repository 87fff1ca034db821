"""Placeholder tokens <c_1>..<c_K>, <bg>: adding them, training only their rows, saving them for diffusers.

Why a wrapper embedding: the trainable parameter holds *only* the new rows, so the frozen vocabulary cannot
change (not even through optimizer weight decay or mixed-precision casts), the optimizer state and checkpoints
stay a few KB even for SD's 49k-row vocabulary, and the rows are written back into a plain ``nn.Embedding``
afterwards. Saved files use diffusers' textual-inversion format (one ``{token: [1, D]}`` safetensors per token)
so ``pipeline.load_textual_inversion(paths, token=tokens)`` reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from comgen.errors import ArtifactError
from comgen.io import atomic_path, atomic_write_json

BG_TOKEN = "<bg>"


def class_tokens(num_classes: int, background: int = 0) -> list[str]:
    """``<c_k>`` for every foreground class id k, then ``<bg>`` (the index of a token = its row offset)."""
    return [f"<c{k}>" for k in range(num_classes) if k != background] + [BG_TOKEN]


def token_file(token: str) -> str:
    return "learned_embeds-" + token.strip("<>").replace("/", "_") + ".safetensors"


class PlaceholderEmbedding(nn.Module):
    """Frozen base embedding + trainable rows for ids >= ``first_new``."""

    def __init__(self, base: nn.Embedding, first_new: int, init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.first_new = first_new
        self.new = nn.Parameter(init.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:  # what HF code reading ``.weight`` expects (full table)
        return torch.cat([self.base.weight[: self.first_new], self.new.to(self.base.weight.dtype)], 0)

    @property
    def num_embeddings(self) -> int:
        return self.first_new + self.new.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = ids >= self.first_new
        base = self.base(ids.clamp(max=self.first_new - 1))
        new = F.embedding((ids - self.first_new).clamp(min=0), self.new).to(base.dtype)
        return torch.where(is_new[..., None], new, base)

    def merged(self) -> nn.Embedding:
        """A plain nn.Embedding with the learned rows written in (frozen)."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, device=self.base.weight.device,
                           dtype=self.base.weight.dtype)
        emb.weight.data.copy_(self.weight.detach())
        emb.weight.requires_grad_(False)
        return emb


def add_placeholders(tokenizer, text_encoder, tokens: list[str], init_std: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[list[int], PlaceholderEmbedding]:
    """Add ``tokens`` to the tokenizer and install a PlaceholderEmbedding in the text encoder."""
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if present:
        raise ArtifactError("tokenizer", f"tokens {present} already exist; load a fresh pipeline")
    old = text_encoder.get_input_embeddings()
    if len(tokenizer) != old.num_embeddings:  # tokenizers with unused rows: new ids must follow the table
        raise ArtifactError("tokenizer", f"tokenizer has {len(tokenizer)} tokens but the text encoder "
                                         f"{old.num_embeddings} embedding rows")
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    first = old.num_embeddings
    if ids != list(range(first, first + len(tokens))):
        raise ArtifactError("tokenizer", f"placeholder ids {ids} are not contiguous after the vocabulary")
    w = old.weight.detach().float()
    init = w.mean(0, keepdim=True).repeat(len(tokens), 1)
    std = init_std if init_std > 0 else 0.01 * float(w.std())
    init = init + std * torch.randn(init.shape, generator=generator, device="cpu").to(init.device)
    wrapper = PlaceholderEmbedding(old, first, init)
    text_encoder.set_input_embeddings(wrapper)
    text_encoder.config.vocab_size = wrapper.num_embeddings
    return ids, wrapper


def merge_placeholders(text_encoder) -> None:
    """Replace the training wrapper by a plain embedding table (for generation / saving the encoder)."""
    emb = text_encoder.get_input_embeddings()
    if isinstance(emb, PlaceholderEmbedding):
        text_encoder.set_input_embeddings(emb.merged())


def save_embeddings(directory: str | Path, tokens: list[str], rows: torch.Tensor) -> list[Path]:
    """Write one diffusers textual-inversion file per token plus ``tokens.json`` (the load order)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for tok, row in zip(tokens, rows.detach().float().cpu()):
        path = directory / token_file(tok)
        with atomic_path(path) as tmp:
            save_file({tok: row[None].contiguous()}, str(tmp))
        paths.append(path)
    atomic_write_json(directory / "tokens.json", {"tokens": tokens, "files": [p.name for p in paths],
                                                  "dim": int(rows.shape[1])})
    return paths


def embedding_files(directory: str | Path) -> tuple[list[str], list[Path]]:
    directory = Path(directory)
    index = directory / "tokens.json"
    if not index.is_file():
        raise ArtifactError(directory, "no learned tokens (tokens.json missing); run token learning first")
    try:
        meta = json.loads(index.read_text())
        tokens, files = list(meta["tokens"]), [directory / f for f in meta["files"]]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(index, "corrupt token index") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ArtifactError(directory, f"missing embedding file(s): {', '.join(missing)}")
    return tokens, files


def load_embeddings(pipe, directory: str | Path) -> list[str]:
    """Load saved tokens into ``pipe`` through diffusers' own ``load_textual_inversion``."""
    tokens, files = embedding_files(directory)
    dim = pipe.text_encoder.get_input_embeddings().embedding_dim
    from safetensors.torch import load_file

    d0 = next(iter(load_file(str(files[0])).values())).shape[-1]
    if d0 != dim:
        raise ArtifactError(directory, f"embeddings are {d0}-d but this text encoder uses {dim}-d; "
                                       "they were learned with another Stable-Diffusion model")
    pipe.load_textual_inversion([str(f) for f in files], token=tokens)
    return tokens


def token_rows(text_encoder, tokenizer, tokens: list[str]) -> torch.Tensor:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return text_encoder.get_input_embeddings().weight.detach()[ids].float().clone()
