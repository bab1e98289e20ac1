"""The LLM's tokenizer straight from ``tokenizer.json`` with the ``tokenizers`` library.

Why: ``AutoTokenizer`` imports most of transformers (≈ 5 s cold, torch.distributed included);
``tokenizers.Tokenizer.from_file`` takes 0.1 s and is the very object transformers' fast tokenizer
wraps. This class offers the part of that API the runtime uses (encode without special tokens,
decode, special tokens added as transformers adds them); tests/modeling/test_llama_infer.py checks ids and
text against ``AutoTokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path


class LightTokenizer:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        eos = config.get("eos_token")
        self.eos_token = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_token_id = self._tk.token_to_id(self.eos_token) if self.eos_token else None

    def __len__(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, *, add_special_tokens: bool = True, return_tensors: str | None = None) -> dict:
        """``{"input_ids": ids}`` for one text: a list, or a ``1×T`` tensor with ``return_tensors="pt"``."""
        ids = self._tk.encode(text, add_special_tokens=add_special_tokens).ids
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.tensor([ids], dtype=torch.long)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        return {"input_ids": ids}

    def tokenize(self, text: str) -> list[str]:
        return self._tk.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        # transformers skips its space clean-up for BPE tokenizers, so the backend's text is the answer
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def add_special_tokens(self, tokens: dict, replace_extra_special_tokens: bool = False) -> int:
        """``{"additional_special_tokens": [...]}`` → added as transformers 5 adds them (special, not
        normalised, no strip), new ones at the end of the vocabulary."""
        from tokenizers import AddedToken

        unknown = set(tokens) - {"additional_special_tokens", "extra_special_tokens"}
        if unknown:
            raise ValueError(f"only additional special tokens can be added here, not {sorted(unknown)}")
        names = [t for key in sorted(tokens) for t in tokens[key]]
        return self._tk.add_special_tokens([AddedToken(t, rstrip=False, lstrip=False, normalized=False, special=True)
                                            for t in names])


__all__ = ["LightTokenizer"]
