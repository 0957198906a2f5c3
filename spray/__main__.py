from spray.cli.main import main

raise SystemExit(main())
