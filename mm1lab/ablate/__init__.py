"""MM1's six ablation lessons on the workbench: `mm1lab ablate LESSON` and notebook 06.

    lessons.py   each lesson: the paper's claim and numbers, the arms (02_pretrain parameters), the recipe per scale
    verdict.py   seeds -> means, 95% intervals, paired effects, and each lesson's verdict rule
    suite.py     run a lesson's arms x seeds as papermill runs of 02_pretrain, resumably; collect and judge
    report.py    the lesson's table and figure, and docs/ablations.md
    cli.py       `mm1lab ablate`
"""
