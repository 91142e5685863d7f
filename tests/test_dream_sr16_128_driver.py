"""The 16->128 DREAM driver's summaries on small known inputs (the numbers of docs/dream.md come from them)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))
import dream_sr16_128 as driver  # noqa: E402


def test_spread_is_the_mean_the_sample_std_and_the_range():
    # 22, 23, 24: mean 23, sample std sqrt(((-1)^2 + 0 + 1^2) / 2) = 1
    assert driver.spread([22.0, 23.0, 24.0]) == '23.00 ± 1.00 (22.00-24.00)'
    assert driver.spread([22.5]) == '22.50 (1 seed)'


def test_reach_table_finds_the_first_step_at_the_standards_final_mean():
    rows = []
    for method, psnrs in (('standard', (21.0, 22.0, 23.0)), ('p1', (22.0, 23.1, 23.5))):
        for step, psnr in zip((700, 1400, 2100), psnrs):
            for seed, shift in ((0, -0.5), (1, 0.5)):  # two seeds: the mean is the value above
                rows.append(dict(method=method, step=str(step), psnr=str(psnr + shift), ssim='0.5', train_s='1'))
    table = driver.reach_table(rows)
    p1 = next(line for line in table if line.startswith('| DREAM p=1'))
    standard = next(line for line in table if line.startswith('| standard'))
    assert p1.endswith('| 1400 |')        # 23.1 >= the standard's final mean 23.0, first at 1400
    assert standard.endswith('| 2100 |')
    assert '22.00 / 0.500 (2)' in standard  # the mean over the two seeds, and their count


def test_recipe_flags_turn_the_config_and_overrides_into_train_flags():
    flags = driver.recipe_flags(dict(driver.METHODS['sr3'][1], out='X', seed=2))
    assert '--residual' not in flags and '--project' not in flags and '--dream' not in flags
    assert flags[flags.index('--pred') + 1] == 'eps'
    assert flags[flags.index('--seed') + 1] == '2'
    assert flags[flags.index('--task') + 1] == 'sr16_128'
