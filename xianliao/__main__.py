from xianliao.cli import main

raise SystemExit(main())
