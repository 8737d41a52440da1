items.map((item) => <Row key={item.id} token={item.token} />)
