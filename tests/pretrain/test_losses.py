"""DINO cross-entropy with centering and sharpening on hand-made tensors, centre updates, the MSE, the token
correspondence InfoNCE and its bank of global negatives."""

import math

import pytest
import torch

from alice.pretrain.losses import (
    ClsLoss,
    CorrespondenceLoss,
    PatchLoss,
    TokenBank,
    TokenPlaces,
    UniformityLoss,
    flat_cells,
    grid_cells,
    reconstruction_loss,
)


def test_cross_entropy_golden_value_with_centering_and_sharpening():
    loss = ClsLoss(2, student_temp=0.1, centre_momentum=0.9)
    loss.centre.copy_(torch.tensor([[1.0, 0.0]]))
    # (teacher - centre) / 0.01 = [0, ln 3] -> target [1/4, 3/4]; the student is uniform -> CE = ln 2.
    teacher = torch.tensor([[1.0, 0.01 * math.log(3)]])
    student = torch.zeros(1, 2)
    assert loss.cross_entropy(student, teacher, teacher_temp=0.01).item() == pytest.approx(math.log(2), abs=1e-6)
    # Uniform target; student / 0.1 = [0, ln 3] -> p = [1/4, 3/4]; CE = (ln 4 + ln 4/3) / 2.
    loss.centre.zero_()
    student = torch.tensor([[0.0, 0.1 * math.log(3)]])
    expected = 0.5 * (math.log(4) + math.log(4 / 3))
    assert loss.cross_entropy(student, torch.zeros(1, 2), 0.04).item() == pytest.approx(expected, abs=1e-6)


def test_cls_loss_pairs_each_teacher_view_with_the_other_student_view():
    loss = ClsLoss(2, student_temp=1.0, centre_momentum=0.9)
    sharp_first, sharp_second = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 10.0]])
    # Teacher(query) agrees with student(key) and teacher(key) with student(query): low loss.
    crossed = loss(student_query=sharp_second, student_key=sharp_first, teacher_query=sharp_first,
                   teacher_key=sharp_second, teacher_temp=0.1)
    same_view = loss(student_query=sharp_first, student_key=sharp_second, teacher_query=sharp_first,
                     teacher_key=sharp_second, teacher_temp=0.1)
    assert crossed.item() < 1e-3
    assert same_view.item() > 5


def test_agreement_compares_the_student_with_the_centred_teacher_of_the_other_view():
    loss = ClsLoss(3, 0.1, 0.9)
    teacher = torch.tensor([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0]])  # raw argmax: class 0 for both views
    student = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # query -> class 2, key -> class 1
    assert loss.agreement(student, teacher).item() == 0.0
    loss.centre.copy_(torch.tensor([[10.0, 0.0, 0.0]]))  # centred: the query view's target is 1, the key's 2
    assert loss.agreement(student, teacher).item() == 1.0
    assert loss.agreement(student, teacher[[1, 0]]).item() == 0.0


def test_the_teacher_gets_no_gradient():
    loss = PatchLoss(3, student_temp=0.1, centre_momentum=0.9)
    student = torch.randn(2, 4, 3, requires_grad=True)
    teacher = torch.randn(2, 4, 3, requires_grad=True)
    loss(student, teacher, 0.04).backward()
    assert student.grad is not None and teacher.grad is None


def test_centres_are_an_ema_of_the_teacher_mean_with_their_own_shapes():
    cls_loss, patch_loss = ClsLoss(3, 0.1, 0.9), PatchLoss(3, 0.1, 0.9)
    assert cls_loss.centre.shape == (1, 3) and patch_loss.centre.shape == (1, 1, 3)
    teacher = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    cls_loss.update_centre(teacher)
    torch.testing.assert_close(cls_loss.centre, torch.tensor([[0.2, 0.2, 0.2]]))
    cls_loss.update_centre(teacher)
    torch.testing.assert_close(cls_loss.centre, torch.tensor([[0.38, 0.38, 0.38]]))
    tokens = torch.arange(12.0).reshape(2, 2, 3)  # mean over batch and tokens: [4.5, 5.5, 6.5]
    patch_loss.update_centre(tokens)
    torch.testing.assert_close(patch_loss.centre, torch.tensor([[[0.45, 0.55, 0.65]]]))
    assert "centre" in dict(patch_loss.named_buffers())


def test_uniformity_is_lower_for_spread_embeddings_and_the_queue_keeps_the_newest_first():
    loss = UniformityLoss(dim=8, queue_size=5)
    collapsed = torch.nn.functional.normalize(torch.ones(4, 8), dim=1)
    assert loss(collapsed).item() == 0.0  # nothing queued yet
    loss.update_queue(collapsed[:3])
    loss.update_queue(torch.eye(8)[:3])
    assert int(loss.queue_filled) == 5
    torch.testing.assert_close(loss.queue[:3], torch.eye(8)[:3])  # newest first, the oldest row dropped
    torch.testing.assert_close(loss.queue[3:], collapsed[:2])
    # Against the queue, embeddings equal to a queued one score higher (worse) than ones away from all of them.
    spread = torch.eye(8)[4:8]
    assert loss(spread).item() < loss(collapsed).item()
    # At distance d from every queued vector the value is -t d^2.
    orthogonal = torch.eye(8)[[3]] * 0.6 + torch.eye(8)[[4]] * 0.8
    expected = torch.logsumexp(-2.0 * (2 - 2 * orthogonal @ loss.queue.T), dim=1) - math.log(5)
    assert loss(orthogonal).item() == pytest.approx(expected.item(), rel=1e-6)


def test_patch_loss_refuses_mismatched_tokens():
    with pytest.raises(ValueError, match="differ"):
        PatchLoss(3, 0.1, 0.9)(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), 0.04)


def test_reconstruction_over_all_or_masked_voxels():
    target = torch.zeros(1, 1, 2, 2, 2)
    recon = torch.zeros(1, 1, 2, 2, 2)
    recon[0, 0, 0] = 2.0  # error 4 on half of the voxels
    mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # two masked voxels, both wrong
    assert reconstruction_loss(recon, target).item() == pytest.approx(2.0)
    assert reconstruction_loss(recon, target, mask).item() == pytest.approx(4.0)


def place_codes(origins: torch.Tensor, grid: tuple[int, int, int], dim: int = 64) -> torch.Tensor:
    """(V, N, dim) tokens that encode the world cell of every token: crop v's cell c is world cell origin_v + c.
    Views of a pair share world coordinates (the same anatomy), so the matched centres get the same code."""
    cells = grid_cells(grid)[None] + origins[:, None]  # (V, N, 3) world cells
    codes = torch.randn(1000, dim, generator=torch.Generator().manual_seed(0))
    key = ((cells[..., 0] + 10) * 31 + cells[..., 1] + 10) * 31 + cells[..., 2] + 10
    return codes[key % 1000]


def two_placed_views():
    """Two views on a 3x3x3 grid whose tokens name their place, the crops shifted by one cell, and the loss."""
    grid = (3, 3, 3)
    shifts = torch.tensor([[1, 0, 0], [0, 0, -1]])
    origins = torch.zeros(2, 3, dtype=torch.long)
    return (grid, CorrespondenceLoss(temperature=0.05), shifts, place_codes(origins, grid),
            place_codes(origins + shifts, grid))


def test_correspondence_is_low_only_when_tokens_name_the_place_they_cover():
    grid = (3, 3, 3)
    loss = CorrespondenceLoss(temperature=0.05)
    origins = torch.zeros(4, 3, dtype=torch.long)
    shifts = torch.tensor([[1, 0, 0], [0, -1, 1], [-1, -1, -1], [0, 0, 1]])
    student = place_codes(origins, grid)
    teacher_shifted = place_codes(origins + shifts, grid)  # the shifted crops start one cell further along
    matched = loss(student, student, teacher_shifted, grid, shifts).item()
    assert matched < 0.05
    # The same tokens with the wrong shifts (the correspondence is off by a cell) or tokens that ignore the place.
    assert loss(student, student, teacher_shifted, grid, -shifts).item() > 1.0
    same = torch.ones_like(student)
    assert loss(same, same, same, grid, shifts).item() == pytest.approx(0.5 * 2 * math.log(27), rel=1e-4)


def test_correspondence_pairs_each_centre_with_the_other_views_centre():
    grid = (3, 3, 3)
    loss = CorrespondenceLoss(temperature=0.05)
    shifts = torch.tensor([[1, 0, 0]] * 4)
    student = place_codes(torch.zeros(4, 3, dtype=torch.long), grid)
    teacher_shifted = place_codes(shifts, grid)
    # Query views (rows 0, 1) and key views (rows 2, 3) at the same world cells: the centres agree.
    aligned = loss(student, student, teacher_shifted, grid, shifts).item()
    # Key views one cell off: each centre's positive now holds another place, and the loss rises.
    moved = torch.cat([student[:2], place_codes(torch.tensor([[0, 1, 0]] * 2), grid)])
    assert loss(student, moved, teacher_shifted, grid, shifts).item() > aligned + 1.0


def test_correspondence_sends_gradient_to_the_student_only():
    grid = (2, 2, 2)
    student = torch.randn(2, 8, 16, requires_grad=True)
    teacher = torch.randn(2, 8, 16, requires_grad=True)
    shifted = torch.randn(2, 8, 16, requires_grad=True)
    CorrespondenceLoss(0.1)(student, teacher, shifted, grid, torch.tensor([[1, 0, 0], [0, 0, -1]])).backward()
    assert student.grad is not None and teacher.grad is None and shifted.grad is None


def test_correspondence_places_only_the_visible_student_tokens():
    grid, loss, shifts, student, teacher_shifted = two_placed_views()
    visible = torch.zeros(2, 27, dtype=torch.bool)
    visible[:, :9] = True
    scrambled = student.clone()
    scrambled[:, 9:] = torch.randn(2, 18, 64)  # masked cells: the student cannot know what is there
    scrambled[:, 13] = student[:, 13]  # the centre token still holds its place
    clean = loss(student, student, teacher_shifted, grid, shifts, visible).item()
    assert loss(scrambled, student, teacher_shifted, grid, shifts, visible).item() == pytest.approx(clean, abs=1e-6)
    assert loss(scrambled, student, teacher_shifted, grid, shifts).item() > clean + 1.0
    nothing = loss(student, student, teacher_shifted, grid, shifts, torch.zeros(2, 27, dtype=torch.bool))
    assert torch.isfinite(nothing)  # no visible token: only the centre term


def test_bank_negatives_are_the_far_places_of_the_same_scan():
    bank = TokenBank(size=5, dim=2, radius=10.0)
    # Newest first: entry 0 is the last pushed. Scan 7 at 0 and 30 voxels, scan 8 at 30; two slots stay empty.
    bank.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([8, 7]), torch.tensor([[30.0, 0, 0], [30, 0, 0]]))
    bank.push(torch.tensor([[1.0, 0.0]]), torch.tensor([7]), torch.tensor([[5.0, 0, 0]]))
    assert bank.case.tolist() == [7, 8, 7, -1, -1]
    scores = torch.tensor([[1.0, 0.0]]) @ bank.tokens.T / 0.5
    logits = bank.far_scores(scores, torch.tensor([7]), torch.tensor([[0.0, 0, 0]]))
    # 5 voxels away: the token's own place; scan 8: another patient; only scan 7's place 30 voxels away counts.
    assert torch.isinf(logits[0, [0, 1, 3, 4]]).all() and logits[0, 2].item() == pytest.approx(0.0)
    bank.push(torch.ones(7, 2), torch.zeros(7, dtype=torch.long), torch.zeros(7, 3))  # more than it holds
    assert bank.case.tolist() == [0] * 5


def test_the_bank_makes_a_token_differ_from_far_places_of_its_scan_only():
    grid, loss, shifts, student, teacher_shifted = two_placed_views()
    places = TokenPlaces(torch.tensor([1, 2]), (grid_cells(grid)[None].repeat(2, 1, 1) + 0.5) * 16)

    def with_bank(case: int, voxels: torch.Tensor) -> float:
        bank = TokenBank(size=27, dim=64, radius=16.0)
        bank.push(student[0], torch.full((27,), case), voxels)  # view 0's own tokens
        return loss(student, student, teacher_shifted, grid, shifts, None, bank, places).item()

    alone = loss(student, student, teacher_shifted, grid, shifts).item()
    # Its tokens at their own places, or in another patient's scan, are no negatives: the loss stays.
    assert with_bank(1, places.voxels[0]) == pytest.approx(alone, abs=1e-6)
    assert with_bank(3, places.voxels[0] + 200) == pytest.approx(alone, abs=1e-6)
    # The same tokens recorded 200 voxels away in the same scan: a place that looks alike elsewhere is penalised.
    assert with_bank(1, places.voxels[0] + 200) > alone + 0.3


def test_sam_partners_extend_the_cross_patient_term_to_every_visible_token():
    grid = (3, 3, 3)
    loss = CorrespondenceLoss(temperature=0.05)
    shifts = torch.tensor([[1, 0, 0]] * 4)
    # Query views (rows 0, 1) and key views (rows 2, 3) one world cell apart along y.
    origins = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0]])
    student = place_codes(origins, grid)
    teacher_shifted = place_codes(origins + shifts, grid)
    cells = grid_cells(grid)
    inside = lambda c: ((c >= 0) & (c < 3)).all(dim=-1)  # noqa: E731
    query_to_key, key_to_query = cells - torch.tensor([0, 1, 0]), cells + torch.tensor([0, 1, 0])
    right = torch.stack([torch.where(inside(c), flat_cells(c, grid), -1)
                         for c in (query_to_key, query_to_key, key_to_query, key_to_query)])
    wrong = torch.where(right >= 0, (right + 1) % 27, -1)
    centres = loss(student, student, teacher_shifted, grid, shifts).item()
    with_right = loss(student, student, teacher_shifted, grid, shifts, partners=right).item()
    # The centres are one cell off in this pair and stay paired, so the right partners bring the loss down.
    assert with_right < centres - 0.5
    assert loss(student, student, teacher_shifted, grid, shifts, partners=wrong).item() > with_right + 5.0
    # Masked tokens take no part.
    visible = torch.zeros(4, 27, dtype=torch.bool)
    masked = loss(student, student, teacher_shifted, grid, shifts, visible, partners=wrong).item()
    assert masked == pytest.approx(loss(student, student, teacher_shifted, grid, shifts, visible).item())
