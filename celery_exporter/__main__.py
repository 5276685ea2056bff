from celery_exporter.cli import main

main()
