"""The ``maskalign`` command."""

from __future__ import annotations

import argparse
import sys

PLUGIN = "napari-maskalign"
WIDGETS = ("Beam-block mask", "Register stack", "Shifts")


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import napari
    except ImportError:
        print(
            "maskalign demo needs napari with a Qt binding: pip install 'napari-maskalign[all]'",
            file=sys.stderr,
        )
        return 2
    viewer = napari.Viewer(title="napari-maskalign demo")
    viewer.open_sample(PLUGIN, "beam_block")
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    # the image stays selected so the widgets start on it
    viewer.layers.selection.active = viewer.layers[0]
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(args.screenshot, canvas_only=False)
        print(f"screenshot saved to {args.screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskalign",
        description=(
            "Align drifting image stacks while part of every image stands still "
            "(a beam block, a scale bar, a dead detector region)."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="open napari with a synthetic drifting beam-block stack, its mask and the widgets",
        description="Open napari with the built-in sample stack, its beam-block mask and the "
        "plugin's dock widgets, ready to register.",
    )
    demo.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save a screenshot of the window to PNG and exit instead of staying open",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
