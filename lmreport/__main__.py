from lmreport.cli import main

raise SystemExit(main())
