"""What the load tools share: test images, starting and stopping the service, an HTTP
client, scraping /metrics, reports, response checks, the closed-loop load generator."""
