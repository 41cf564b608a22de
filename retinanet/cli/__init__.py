"""The command lines: argparse and `run_cli` around the layers below; scripts/*.py, train.py and evaluate.py call these."""
