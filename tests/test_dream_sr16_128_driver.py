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
    cost = dict(standard_step_s=0.5, dream_step_s=0.75)
    table = driver.reach_table(rows, cost)
    p1 = next(line for line in table if line.startswith('| DREAM p=1'))
    standard = next(line for line in table if line.startswith('| standard'))
    assert p1.endswith('| 1400 | 1050 |')   # 23.1 >= the standard's final mean 23.0, first at 1400: 1400 x 0.75 s
    assert standard.endswith('| 2100 | 1050 |')  # 2100 x 0.5 s
    # seeds at 22 - 0.5 and 22 + 0.5: mean 22, sample std sqrt(0.5) = 0.71, 2 seeds
    assert '| 22.00 ± 0.71 (2) |' in standard
    assert driver.reach_table(rows)[-2].endswith('| 1400 | – |')  # no cost file: no seconds


def test_paired_table_subtracts_the_standard_of_the_same_seed_and_step():
    rows = [dict(method='standard', seed='0', step='700', psnr='22.0'),
            dict(method='standard', seed='1', step='700', psnr='21.0'),
            dict(method='p1', seed='0', step='700', psnr='22.5'),   # +0.5 over seed 0's standard
            dict(method='p1', seed='1', step='700', psnr='22.5')]   # +1.5 over seed 1's standard
    line = next(x for x in driver.paired_table(rows) if x.startswith('| DREAM p=1'))
    # mean 1.0, sample std sqrt((0.25 + 0.25) / 1) = 0.71, range 0.5-1.5 (an unpaired difference would be 1.0 +- 0)
    assert line == '| DREAM p=1 | 1.00 ± 0.71 (0.50-1.50) |'


def test_paired_table_pairs_dream_in_the_sr3_formulation_with_that_formulations_standard():
    rows = [dict(method='standard', seed='0', step='700', psnr='22.0'),
            dict(method='sr3', seed='0', step='700', psnr='15.0'),
            dict(method='sr3', seed='1', step='700', psnr='14.0'),
            dict(method='sr3_dream', seed='0', step='700', psnr='17.0'),   # +2 over seed 0's SR3 standard
            dict(method='sr3_dream', seed='1', step='700', psnr='17.0')]   # +3 over seed 1's (no recipe standard)
    table = driver.paired_table(rows)
    line = next(x for x in table if x.startswith('| SR3 formulation, DREAM'))
    assert line == '| SR3 formulation, DREAM p=1 - SR3 formulation, standard | 2.50 ± 0.71 (2.00-3.00) |'
    assert next(x for x in table if x.startswith('| SR3 formulation, standard |')) == \
        '| SR3 formulation, standard | -7.00 (1) |'  # the formulation itself against the recipe's standard


def test_final_table_counts_the_seeds_above_each_baseline():
    base = dict(n='100', steps='50', bicubic_psnr='21.8', bicubic_ssim='0.58', baseline_psnr='22.4',
                baseline_ssim='0.60', step='2100')
    rows = [dict(base, method='standard', label='standard', seed=str(s), psnr=str(p), ssim='0.6')
            for s, p in enumerate((22.0, 22.5, 22.3))]
    rows += [dict(base, method='p1', label='DREAM p=1', seed=str(s), psnr=str(p), ssim='0.6')
             for s, p in enumerate((22.6, 22.7, 22.1))]
    table = driver.final_table(rows)
    standard = next(x for x in table if x.startswith('| standard'))
    p1 = next(x for x in table if x.startswith('| DREAM p=1'))
    assert standard.endswith('| 3 / 1 of 3 |')     # all above 21.8; only 22.5 above 22.4
    assert p1.endswith('| 3 / 2 of 3 |')
    assert '| 0.20 ± 0.40 (-0.20 to 0.60) |' in p1   # paired: +0.6, +0.2, -0.2 (a negative range: 'to')


def test_steps_table_finds_the_fewest_steps_reaching_the_standards_best():
    rows = []
    for method, curve in (('standard', (20.0, 22.0, 21.5)), ('p1', (21.0, 22.1, 22.0))):
        for k, psnr in zip((2, 10, 50), curve):
            rows.append(dict(method=method, seed='0', steps=str(k), temperature='1.0', n='32', psnr=str(psnr)))
    table = driver.steps_table(rows)
    assert next(x for x in table if x.startswith('| standard')).endswith('| 10 |')   # its best, 22.0 at 10
    assert next(x for x in table if x.startswith('| DREAM p=1')).endswith('| 10 |')  # 22.1 >= 22.0 at 10
    for r, ssim in zip(rows, (0.50, 0.60, 0.62, 0.55, 0.58, 0.63)):  # SSIM: the standard's best 0.62 at 50
        r['ssim'] = str(ssim)
    table = driver.steps_table(rows, 'ssim')
    assert table[0].startswith('SSIM against sampling steps') and "the standard's best is 0.620" in table[0]
    assert next(x for x in table if x.startswith('| standard')) == '| standard | 0.500 | 0.600 | 0.620 | 50 |'
    assert next(x for x in table if x.startswith('| DREAM p=1')).endswith('| 0.630 | 50 |')


def test_recipe_flags_turn_the_config_and_overrides_into_train_flags():
    flags = driver.recipe_flags(dict(driver.METHODS['sr3'][1], out='X', seed=2))
    assert '--residual' not in flags and '--project' not in flags and '--dream' not in flags
    assert flags[flags.index('--pred') + 1] == 'eps'
    assert flags[flags.index('--seed') + 1] == '2'
    assert flags[flags.index('--task') + 1] == 'sr16_128'


def test_temperature_table_gives_each_temperature_its_mean_over_seeds():
    base = dict(steps='50', n='32', bicubic_psnr='21.6', baseline_psnr='22.2')
    rows = [dict(base, method='p1', seed=str(s % 2), temperature=t, psnr=str(p), ssim='0.6')
            for s, (t, p) in enumerate((('0.0', 22.0), ('0.0', 23.0), ('0.6', 21.0), ('0.6', 21.0)))]
    line = next(x for x in driver.temperature_table(rows) if x.startswith('| DREAM p=1'))
    # T = 0: 22 and 23 -> mean 22.50, sample std 0.71; T = 0.6: 21 and 21 -> 21.00 ± 0.00
    assert line == ('| DREAM p=1 | 2 | 22.50 ± 0.71 (22.00-23.00) / 0.600 | 21.00 ± 0.00 (21.00-21.00) / 0.600 |')
