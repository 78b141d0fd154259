"""FLEX_TEMPLATE_PYTHON_PY_FILE: the launcher runs this file; the work is in eo_etl.pipeline.flex_template.

A separate file, not the module itself, so that running it as a script puts no package folder on sys.path.
"""

from eo_etl.pipeline.flex_template import main

if __name__ == "__main__":
    main()
