"""experiments/relay64_256.py's pure summary code (issue 29, items 2-3) on rows computed by hand: mean ± std (min-max)
over seeds, the margins over the input / bicubic / baseline, the targets (+1 dB over the input, within 0.5 dB of
bicubic, 30 minutes alone) and the paired effects of block noise and RDM's blur."""
import os
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import relay64_256 as drv  # noqa: E402


def relay_row(variant, seed, psnr, s_block=0.15, ssim=0.7, flat=1.0, project='False'):
    """A relay row as the scores CSV holds it (strings); input 26 dB, bicubic 28, baseline 28.5 on every seed."""
    label = f"{drv.VARIANTS[variant][0]}: relay{' + projection' if project == 'True' else ''}, s_block {s_block:g}"
    return dict(label=label, variant=variant, seed=str(seed), step='800', steps='40', project=project,
                s_block=str(s_block), psnr=str(psnr), ssim=str(ssim), flat_noise=str(flat), input_psnr='26.0',
                bicubic_psnr='28.0', baseline_psnr='28.5', sampler='relay')


BASE = dict(label='input (nearest up of the tile means)', seed='', step='0', psnr='26.0', ssim='0.6', flat_noise='2.0',
            input_psnr='26.0', bicubic_psnr='28.0', baseline_psnr='28.5', sampler='', variant='')
RECIPE = [relay_row('recipe', 0, 27.0, ssim=0.70, flat=1.0), relay_row('recipe', 1, 27.5, ssim=0.72, flat=1.2),
          relay_row('recipe', 2, 28.0, ssim=0.77, flat=1.4)]
NO_BN = [relay_row('no_bn', 0, 26.5), relay_row('no_bn', 1, 27.5), relay_row('no_bn', 2, 27.7)]
RECIPE_SB0 = [relay_row('recipe', 0, 27.2, s_block=0.0), relay_row('recipe', 1, 27.6, s_block=0.0),
              relay_row('recipe', 2, 28.3, s_block=0.0)]
RDM = [relay_row('rdm_blur', 0, 26.0), relay_row('rdm_blur', 1, 26.4)]  # seed 2 missing: paired over 2 seeds


def test_target_every_seed_mean_only_or_not():
    assert drv.target([1.0, 1.5, 2.0], 1.0) == 'met (every seed)'  # min 1.0 reaches 1.0
    assert drv.target([0.5, 1.5, 1.7], 1.0) == 'met (mean)'  # mean 1.233, min 0.5
    assert drv.target([-1.5, -0.5, -0.3], -0.5) == 'not met'  # mean -0.767


def test_summary_mean_std_min_max_margins_and_targets_by_hand():
    lines = drv.summary([BASE] + RECIPE + NO_BN).splitlines()
    # the baseline row: one value, no seeds, no targets; margins 26 - 26, 26 - 28, 26 - 28.5
    assert lines[2] == '| input (nearest up of the tile means) | - | 26.00 | 0.600 | 2.00 | +0.00 | -2.00 | -2.50 |  |'
    # recipe: PSNR 27, 27.5, 28: mean 27.5, sample std sqrt((0.25 + 0 + 0.25) / 2) = 0.5; SSIM 0.70, 0.72, 0.77: mean
    # 0.73, std sqrt((0.0009 + 0.0001 + 0.0016) / 2) = 0.0361; flat 1.0, 1.2, 1.4: 1.2 ± 0.2. Over the input (26):
    # +1, +1.5, +2 (every seed >= +1); over bicubic (28): -1, -0.5, 0 (mean -0.5 reaches -0.5, seed 0 does not);
    # over the baseline (28.5): -1.5, -1, -0.5.
    assert lines[3] == ('| CPU recipe: relay, s_block 0.15 | 3 | 27.50 ± 0.50 (27.00-28.00) '
                        '| 0.730 ± 0.036 (0.700-0.770) | 1.20 ± 0.20 (1.00-1.40) | +1.50 ± 0.50 (+1.00 to +2.00) '
                        '| -0.50 ± 0.50 (-1.00 to +0.00) | -1.00 ± 0.50 (-1.50 to -0.50) '
                        '| input +1 dB: met (every seed); bicubic -0.5 dB: met (mean) |')
    # no block noise in training: 26.5, 27.5, 27.7: over the input +0.5, +1.5, +1.7 (mean 1.233: mean only); over
    # bicubic -1.5, -0.5, -0.3 (mean -0.767: not met)
    assert lines[4].endswith('| input +1 dB: met (mean); bicubic -0.5 dB: not met |')
    assert '| 27.23 ± 0.64 (26.50-27.70) |' in lines[4]  # mean 27.2333, std sqrt((0.5378+0.0711+0.2178)/2) = 0.643
    assert lines[-1] == 'Training: 800 iterations (no cost stage: minutes alone unknown).'


def test_summary_training_minutes_against_30():
    # 800 iterations x 2 s = 26.7 min: met; x 2.5 s = 33.3 min: not met
    assert drv.summary(RECIPE, 2.0).splitlines()[-1] == \
        'Training: 800 iterations x 2.000 s/it alone = 26.7 min (<= 30 min: met).'
    assert drv.summary(RECIPE, 2.5).splitlines()[-1] == \
        'Training: 800 iterations x 2.500 s/it alone = 33.3 min (<= 30 min: not met).'


def test_effects_paired_by_seed_by_hand():
    lines = drv.effects([BASE] + RECIPE + NO_BN + RECIPE_SB0 + RDM).splitlines()
    # block noise in training at s_block 0.15: recipe - no_bn = 0.5, 0.0, 0.3: mean 0.2667, std sqrt(0.12667 / 2)
    # = 0.252; SSIM 0.70 - 0.7, 0.72 - 0.7, 0.77 - 0.7 = 0, 0.02, 0.07: mean 0.03, std sqrt((9 + 1 + 16)e-4 / 2)
    assert '| block noise in training (recipe - no block noise) | 40 steps, projection off, s_block 0.15 | 3 | ' \
           '+0.27 ± 0.25 (+0.00 to +0.50) | +0.030 ± 0.036 (+0.000 to +0.070) |' in lines
    # RDM's blur - recipe, seeds 0 and 1 only: -1.0, -1.1: mean -1.05, std 0.0707; SSIM 0, -0.02: -0.01 ± 0.0141
    assert "| RDM's CelebA-HQ blur - recipe | 40 steps, projection off, s_block 0.15 | 2 | " \
           '-1.05 ± 0.07 (-1.10 to -1.00) | -0.010 ± 0.014 (-0.020 to +0.000) |' in lines
    # block noise at sampling for the recipe: 27.0 - 27.2, 27.5 - 27.6, 28.0 - 28.3 = -0.2, -0.1, -0.3: -0.2 ± 0.1;
    # SSIM 0.70 - 0.7, 0.72 - 0.7, 0.77 - 0.7
    assert '| block noise at sampling (s_block 0.15 - 0), recipe | 40 steps, projection off | 3 | ' \
           '-0.20 ± 0.10 (-0.30 to -0.10) | +0.030 ± 0.036 (+0.000 to +0.070) |' in lines
    # no_bn and rdm_blur have no s_block 0 rows, and there are no no_bn rows at s_block 0: no such lines
    assert len(lines) == 2 + 3
    # one sampler setting (s_block 0) and one variant: nothing to pair, the header alone
    assert len(drv.effects(RECIPE_SB0).splitlines()) == 2


def test_the_drivers_default_iterations_are_the_recipes():
    with open(os.path.join(ROOT, drv.CONFIG), 'rb') as f:
        recipe = tomllib.load(f)
    assert drv.get_args(['report']).max_iters == recipe['max_iters']
    assert recipe['holdout'] == 32 and recipe['task'] == 'relay64_256'
