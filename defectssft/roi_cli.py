"""``defectssft roi PROJECT``: show, set or clear the project's region of interest."""

from __future__ import annotations

import argparse
import json


def cmd_roi(args: argparse.Namespace) -> int:
    from defectssft.errors import ProjectError
    from defectssft.project import Project
    from defectssft.project_roi import clear_roi, project_roi, set_roi

    project = Project.open(args.project)
    if args.clear and (args.rect or args.mask):
        raise ProjectError("--clear cannot be combined with --rect or --mask")
    if args.clear:
        had = clear_roi(project)
        print("region of interest cleared: models trained from now on see the whole image"
              if had else "no region of interest was set")  # fmt: skip
        return 0
    if args.rect or args.mask:
        roi, check = set_roi(project, args.rect, args.mask)
        print(f"region of interest set: {roi.describe()} (x,y,w,h in image pixels); "
              f"it fits all {check.images} project image(s); the model sees "
              f"{roi.size[1]}x{roi.size[0]} px (w x h) of each; retrain to use it")  # fmt: skip
        return 0
    roi = project_roi(project)
    if args.json:
        print(json.dumps(None if roi is None else {"rects": [list(r) for r in roi.rects],
                                                   "mask": roi.mask is not None}))  # fmt: skip
    elif roi is None:
        print("no region of interest: models see the whole image")
    else:
        x, y, w, h = roi.bbox
        print(f"region of interest: {roi.describe()}; bounding box {x},{y},{w},{h}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser(
        "roi",
        help="the project's region of interest (rectangles, optional mask)",
        description="Without options: show the ROI. With --rect (repeatable) set it; each "
        "rectangle is x,y,w,h in the pixels of the project's images, the model sees their "
        "bounding box (black outside the rectangles and, with --mask, where the mask is 0). "
        "An ROI outside any project image is refused. Retrain for it to take effect.",
    )
    p.add_argument("project")
    p.add_argument("--rect", action="append", metavar="X,Y,W,H", help="a rectangle (repeatable)")
    p.add_argument("--mask", metavar="IMAGE", help="mask image, the images' size (0 = ignore)")
    p.add_argument("--clear", action="store_true", help="remove the ROI")
    p.add_argument("--json", action="store_true", help="show as JSON")
    p.set_defaults(func=cmd_roi)
