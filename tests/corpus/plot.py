"""Draws the corpus report (CSV from `cargo bench -p tensorgate --bench corpus_report`) as a
grouped bar chart of upstream bytes per file and method.

usage: plot.py REPORT.csv OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    source, target = sys.argv[1:]
    with open(source) as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], [row for row in rows[1:] if row[0] != "total"]
    methods = header[1:]
    files = [row[0].split("/")[-1].replace(".safetensors", "") for row in body]
    figure, axis = plt.subplots(figsize=(13, 6))
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        values = [float(row[index + 1]) / 1e6 if row[index + 1] else 0 for row in body]
        axis.bar([i + index * width for i in range(len(files))], values, width, label=method)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(files))])
    axis.set_xticklabels(files, rotation=35, ha="right", fontsize=8)
    axis.set_ylabel("MB stored")
    axis.set_title("Upstream bytes per corpus file (lower is better)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
