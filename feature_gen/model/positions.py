"""Positions over the real tokens of a padded batch: the one definition the Item LLM, the User LLM and
the ID baseline use, so left and right padding give every real token the same position."""

from __future__ import annotations

import torch


def real_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] position of each real token counted from the row's first real token (0, 1, ...). Padding
    before it gets 0 and padding after it repeats the last real position (their outputs are masked).
    Left padding then does not shift rotary or absolute positions: a row's embedding does not depend
    on how wide its batch is."""
    return (attention_mask.to(torch.long).cumsum(dim=1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last real position (works for left and right padding)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (attention_mask.to(torch.long) * positions).max(dim=1).values
